"""The install the README promises: the main job's command installs no Ray, CI runs exactly the README's test
command, and the build requirement is one that can build this pyproject."""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def bash_blocks(text: str) -> list[str]:
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", text, re.S)]


def test_main_job_installs_no_ray_and_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    main_job, test = bash_blocks(readme)[:2]
    assert "zskt demo" in main_job and "pip install -e ." in main_job
    assert "[test]" not in main_job and "ray" not in main_job.lower()
    assert "pytest" in test
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test in ci


def test_extras_and_build_requirement():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    deps = " ".join(project["project"]["dependencies"]).lower()
    assert "ray" not in deps and "tensorboard" not in deps  # optional extras only
    extras = project["project"]["optional-dependencies"]
    assert any(d.startswith("ray") for d in extras["ray"]) and any(
        d.startswith("tensorboard") for d in extras["tensorboard"]
    )
    # license = "MIT" (a PEP 639 SPDX string) needs setuptools 77 or newer to build.
    if isinstance(project["project"].get("license"), str):
        (req,) = [r for r in project["build-system"]["requires"] if r.startswith("setuptools")]
        assert int(re.search(r">=\s*(\d+)", req).group(1)) >= 77
