"""The downloader against a loopback HTTP server: checksums, atomic placement, no repeat downloads, CIFAR's
tarballs."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import io
import socket
import tarfile
import threading
from pathlib import Path

import pytest

from zskt.data import DATASETS, dataset_files_present, download_dataset, load_dataset
from zskt.data import download as dl
from zskt.data.synthetic import write_fake_dataset
from zskt.errors import ZsktError


class _Server:
    """Serves files from a folder on 127.0.0.1 and records the paths asked for."""

    def __init__(self, folder: Path):
        self.folder, self.requests = folder, []
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(folder), **kwargs)

            def do_GET(self):
                server.requests.append(self.path)
                if self.path == "/truncated":  # promises 1000 bytes, sends 10, hangs up
                    self.send_response(200)
                    self.send_header("Content-Length", "1000")
                    self.end_headers()
                    self.wfile.write(b"0123456789")
                    return
                super().do_GET()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(tmp_path, monkeypatch):
    for variable in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(variable, raising=False)
    folder = tmp_path / "served"
    folder.mkdir()
    running = _Server(folder)
    yield running
    running.close()


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _serve(server, name: str, data: bytes) -> str:
    (server.folder / name).write_bytes(data)
    return server.url + name


def test_fetch_verifies_and_places_the_file(server, tmp_path):
    data = b"canonical bytes" * 1000
    url = _serve(server, "file.bin", data)
    dest = tmp_path / "root" / "sub" / "file.bin"
    assert dl.fetch(url, dest, _md5(data), progress=False) == dest
    assert dest.read_bytes() == data
    assert sorted(p.name for p in dest.parent.iterdir()) == ["file.bin"]  # no temporary file left


def test_fetch_wrong_md5_leaves_nothing(server, tmp_path):
    url = _serve(server, "file.bin", b"tampered")
    dest = tmp_path / "root" / "file.bin"
    with pytest.raises(ZsktError) as caught:
        dl.fetch(url, dest, "0" * 32, progress=False)
    text = str(caught.value)
    assert url in text and "expected " + "0" * 32 in text and _md5(b"tampered") in text
    assert list(dest.parent.iterdir()) == []


def test_fetch_keeps_a_good_file_and_replaces_a_bad_one(server, tmp_path):
    data = b"good"
    url = _serve(server, "file.bin", data)
    dest = tmp_path / "file.bin"
    dest.write_bytes(data)
    dl.fetch(url, dest, _md5(data), progress=False)
    assert server.requests == []
    dest.write_bytes(b"bad copy")
    dl.fetch(url, dest, _md5(data), progress=False)
    assert server.requests == ["/file.bin"] and dest.read_bytes() == data


@pytest.mark.parametrize(
    "path, message", [("missing.bin", "HTTP 404"), ("truncated", "closed after 10 of 1000 bytes")]
)
def test_fetch_http_failures(server, tmp_path, path, message):
    dest = tmp_path / "root" / "file.bin"
    with pytest.raises(ZsktError, match=message) as caught:
        dl.fetch(server.url + path, dest, "0" * 32, progress=False)
    assert server.url + path in str(caught.value) and str(dest) in str(caught.value)
    assert list(dest.parent.iterdir()) == []


def test_fetch_connection_refused(tmp_path):
    with socket.socket() as probe:  # a port that nothing listens on once closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(ZsktError, match="downloading http://127.0.0.1.* failed .*refused"):
        dl.fetch(f"http://127.0.0.1:{port}/x", tmp_path / "x", "0" * 32, progress=False)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------- whole data sets, end to end


def _cifar_tarball(tmp_path, n_train=15, n_test=6) -> bytes:
    staging = tmp_path / "staging"
    write_fake_dataset("cifar10", staging, n_train=n_train, n_test=n_test)
    (staging / "cifar-10-batches-py" / "readme.html").write_text(
        "<p>extra member, as in the real archive</p>"
    )
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(staging / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    return buffer.getvalue()


def _point_at(monkeypatch, server, name, contents: dict[str, bytes]):
    info = DATASETS[name]
    remotes = tuple(dataclasses.replace(r, md5=_md5(contents[r.filename])) for r in info.remote)
    monkeypatch.setitem(DATASETS, name, dataclasses.replace(info, base_url=server.url, remote=remotes))
    for filename, data in contents.items():
        _serve(server, filename, data)


def test_cifar_download_extract_and_load(server, tmp_path, monkeypatch):
    _point_at(monkeypatch, server, "cifar10", {"cifar-10-python.tar.gz": _cifar_tarball(tmp_path)})
    root = tmp_path / "data"
    data = load_dataset("cifar10", root, download=True)
    assert data.train.images.shape == (15, 3, 32, 32) and len(data.test) == 6
    assert server.requests == ["/cifar-10-python.tar.gz"]
    assert sorted(p.name for p in root.iterdir()) == ["cifar-10-batches-py", "cifar-10-python.tar.gz"]
    load_dataset("cifar10", root, download=True)  # everything present: no request
    assert len(server.requests) == 1
    # A deleted batch comes back from the kept archive, whose md5 still matches: no new request either.
    (root / "cifar-10-batches-py" / "data_batch_2").unlink()
    assert not dataset_files_present("cifar10", root)
    assert torch_equal(load_dataset("cifar10", root, download=True).train.images, data.train.images)
    assert len(server.requests) == 1
    assert sorted(p.name for p in root.iterdir()) == ["cifar-10-batches-py", "cifar-10-python.tar.gz"]


def torch_equal(a, b) -> bool:
    return a.shape == b.shape and bool((a == b).all())


def test_cifar_archive_without_the_batches(server, tmp_path, monkeypatch):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("cifar-10-batches-py/readme.html")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"hello"))
    _point_at(monkeypatch, server, "cifar10", {"cifar-10-python.tar.gz": buffer.getvalue()})
    root = tmp_path / "data"
    with pytest.raises(ZsktError, match="lacks cifar-10-batches-py/data_batch_1"):
        download_dataset("cifar10", root, progress=False)
    assert sorted(p.name for p in root.iterdir()) == ["cifar-10-python.tar.gz"]  # no half-made folder


def test_cifar_archive_escaping_the_root_is_refused(server, tmp_path, monkeypatch):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"hello"))
    _point_at(monkeypatch, server, "cifar10", {"cifar-10-python.tar.gz": buffer.getvalue()})
    root = tmp_path / "data"
    with pytest.raises(ZsktError, match="cannot be unpacked"):
        download_dataset("cifar10", root, progress=False)
    assert not (tmp_path / "escaped.txt").exists()


def test_fashion_mnist_downloads_only_missing_files(server, tmp_path, monkeypatch):
    staging = tmp_path / "staging"
    write_fake_dataset("fashion-mnist", staging, n_train=8, n_test=4)
    raw = staging / "FashionMNIST" / "raw"
    _point_at(monkeypatch, server, "fashion-mnist", {p.name: p.read_bytes() for p in raw.iterdir()})
    root = tmp_path / "data"
    (root / "FashionMNIST" / "raw").mkdir(parents=True)
    for name in ("train-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (root / "FashionMNIST" / "raw" / name).write_bytes((raw / name).read_bytes())
    data = load_dataset("fashion-mnist", root, download=True)
    assert (len(data.train), len(data.test)) == (8, 4)
    assert sorted(server.requests) == ["/t10k-images-idx3-ubyte.gz", "/train-labels-idx1-ubyte.gz"]


def test_svhn_download(server, tmp_path, monkeypatch):
    staging = tmp_path / "staging"
    write_fake_dataset("svhn", staging, n_train=7, n_test=3)
    _point_at(monkeypatch, server, "svhn", {p.name: p.read_bytes() for p in staging.iterdir()})
    root = download_dataset("svhn", tmp_path / "data", progress=False)
    assert sorted(p.name for p in root.iterdir()) == ["test_32x32.mat", "train_32x32.mat"]
    assert len(load_dataset("svhn", root).train) == 7


def test_download_without_a_server_fails_cleanly(tmp_path, monkeypatch):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setitem(
        DATASETS, "svhn", dataclasses.replace(DATASETS["svhn"], base_url=f"http://127.0.0.1:{port}/")
    )
    with pytest.raises(ZsktError, match="train_32x32.mat failed"):
        load_dataset("svhn", tmp_path, download=True)
    assert list(tmp_path.iterdir()) == []


def test_data_root_that_is_a_file(tmp_path):
    (tmp_path / "occupied").write_text("")
    with pytest.raises(ZsktError, match="cannot create the data root .*occupied.*--data-dir or ZSKT_DATA"):
        download_dataset("svhn", tmp_path / "occupied", progress=False)


def test_digits_need_no_download(tmp_path):
    assert download_dataset("digits", tmp_path) == tmp_path
    assert dataset_files_present("digits", tmp_path) and list(tmp_path.iterdir()) == []


def test_table_matches_spec():
    # SPEC §10's published checksums; a typo here would make every real download fail.
    md5s = {r.filename: r.md5 for info in DATASETS.values() for r in info.remote}
    assert md5s == {
        "cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a",
        "cifar-100-python.tar.gz": "eb9058c3a382ffc7106e4002c42a8d85",
        "train_32x32.mat": "e26dedcc434d2e4c54c9b2d4a06d8373",
        "test_32x32.mat": "eb5a983be6a315427106f1b164d9cef3",
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    }
    assert (
        DATASETS["cifar10"].base_url + "cifar-10-python.tar.gz"
        == "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    )
    assert (
        DATASETS["cifar100"].base_url + "cifar-100-python.tar.gz"
        == "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
    )


def test_cifar100_download_checks_md5_extracts_and_loads(server, tmp_path, monkeypatch):
    staging = tmp_path / "staging"
    write_fake_dataset("cifar100", staging, n_train=120, n_test=7)
    (staging / "cifar-100-python" / "meta").write_bytes(b"class names, as in the real archive")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(staging / "cifar-100-python", arcname="cifar-100-python")
    archive = buffer.getvalue()
    _point_at(monkeypatch, server, "cifar100", {"cifar-100-python.tar.gz": archive})
    root = tmp_path / "data"
    data = load_dataset("cifar100", root, download=True)
    assert server.requests == ["/cifar-100-python.tar.gz"]
    assert sorted(p.name for p in (root / "cifar-100-python").iterdir()) == ["meta", "test", "train"]
    assert len(data.train) == 120 and len(data.test) == 7 and data.info.num_classes == 100
    assert sorted(set(data.train.labels.tolist())) == list(range(100))
    # A tampered archive (right name, wrong bytes) is refused by its md5 and leaves nothing behind.
    (root / "cifar-100-python" / "test").unlink()
    (root / "cifar-100-python.tar.gz").unlink()
    _serve(server, "cifar-100-python.tar.gz", archive[:-1] + b"x")
    with pytest.raises(ZsktError, match="has md5 .*expected " + _md5(archive)):
        load_dataset("cifar100", root, download=True)
    assert sorted(p.name for p in root.iterdir()) == ["cifar-100-python"]
    assert not (root / "cifar-100-python" / "test").exists()


def test_download_fetches_only_the_splits_asked_for(server, tmp_path, monkeypatch):
    staging = tmp_path / "staging"
    write_fake_dataset("svhn", staging, n_train=7, n_test=3)
    _point_at(monkeypatch, server, "svhn", {p.name: p.read_bytes() for p in staging.iterdir()})
    root = tmp_path / "data"
    data = load_dataset("svhn", root, download=True, splits=("test",))
    assert server.requests == ["/test_32x32.mat"] and data.train is None and len(data.test) == 3
    assert sorted(p.name for p in root.iterdir()) == ["test_32x32.mat"]
