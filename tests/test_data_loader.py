"""DeviceLoader (coverage, determinism, resume, augmentation), normalize, and the M-images-per-class
subsets."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from zskt.data import DeviceLoader, ImageSplit, normalize, select_per_class
from zskt.data.loader import pad_crop_flip
from zskt.errors import ZsktError

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.5)


def _split(n=37, size=32, seed=0) -> ImageSplit:
    """Random images; label i marks image i, so every batch tells which images it holds."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, size, size), generator=generator, dtype=torch.uint8)
    return ImageSplit(images, torch.arange(n))


def _orders(loader, epochs=1):
    return [torch.cat([labels for _, labels in loader]).tolist() for _ in range(epochs)]


def test_normalize_matches_to_tensor_then_normalize():
    images = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 3, 1, 1).expand(2, 3, 2, 2)
    out = normalize(images, MEAN, STD)
    assert out.dtype == torch.float32 and out.shape == (2, 3, 2, 2)
    expected = torch.tensor([(0 - 0.5) / 0.2, (0.2 - 0.4) / 0.25, (1 - 0.3) / 0.5])
    assert torch.allclose(out[1, :, 1, 0], expected)
    with pytest.raises(ValueError, match="3-channel images with 1 means"):
        normalize(images, (0.5,), (0.5,))


def test_every_index_once_per_epoch_and_partial_last_batch():
    split = _split(37)
    loader = DeviceLoader(split, MEAN, STD, batch_size=8, seed=3)
    assert len(loader) == 5
    sizes = []
    for images, labels in loader:
        assert images.dtype == torch.float32 and labels.dtype == torch.int64
        # Images stay paired with their labels through the shuffle.
        assert torch.equal(images, normalize(split.images[labels], MEAN, STD))
        sizes.append(len(labels))
    assert sizes == [8, 8, 8, 8, 5] and loader.epoch == 1
    for order in _orders(loader, epochs=3):
        assert sorted(order) == list(range(37))


def test_drop_last():
    loader = DeviceLoader(_split(37), MEAN, STD, batch_size=8, drop_last=True)
    assert len(loader) == 4
    (order,) = _orders(loader)
    assert len(order) == 32 and len(set(order)) == 32
    assert len(DeviceLoader(_split(32), MEAN, STD, batch_size=8, drop_last=True)) == 4


def test_shuffle_is_seeded_per_epoch():
    first, second = _orders(DeviceLoader(_split(), MEAN, STD, 8, seed=1), epochs=2)
    again = _orders(DeviceLoader(_split(), MEAN, STD, 8, seed=1), epochs=2)
    other_seed = _orders(DeviceLoader(_split(), MEAN, STD, 8, seed=2))
    assert [first, second] == again
    assert first != second and first != other_seed[0]
    assert _orders(DeviceLoader(_split(), MEAN, STD, 8, shuffle=False)) == [list(range(37))]


def test_state_dict_resumes_at_the_next_epoch():
    loader = DeviceLoader(_split(), MEAN, STD, 8, seed=5, augment=True)
    for _ in range(2):
        for _ in loader:
            pass
    state = loader.state_dict()
    assert state == {"epoch": 2}
    expected = [(x.clone(), y.clone()) for x, y in loader]

    resumed = DeviceLoader(_split(), MEAN, STD, 8, seed=5, augment=True)
    resumed.load_state_dict(state)
    got = list(resumed)
    assert all(
        torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(expected, got, strict=True)
    )
    assert resumed.epoch == 3


def test_epoch_advances_only_after_a_full_pass():
    loader = DeviceLoader(_split(), MEAN, STD, 8)
    for _ in loader:
        break
    assert loader.epoch == 0


def test_indices_select_a_subset():
    indices = torch.tensor([3, 30, 7, 11])
    loader = DeviceLoader(_split(), MEAN, STD, 3, indices=indices)
    assert len(loader) == 2 and loader.images.shape[0] == 4
    (order,) = _orders(loader)
    assert sorted(order) == [3, 7, 11, 30]


def test_no_augmentation_is_plain_normalisation():
    split = _split(20)
    loader = DeviceLoader(split, MEAN, STD, 20, augment=False, seed=4)
    images, labels = next(iter(loader))
    assert torch.equal(images, normalize(split.images[labels], MEAN, STD))


def test_pad_crop_flip_geometry():
    images = torch.arange(2 * 1 * 4 * 4, dtype=torch.uint8).view(2, 1, 4, 4) + 1
    centre = pad_crop_flip(images, torch.tensor([[2, 2], [2, 2]]), torch.tensor([False, True]), pad=2)
    assert torch.equal(centre[0], images[0]) and torch.equal(centre[1], images[1].flip(-1))
    corner = pad_crop_flip(images, torch.tensor([[0, 0], [4, 3]]), torch.tensor([False, False]), pad=2)
    # Offset (0, 0): the image moves 2 down and 2 right, zeros above and to the left.
    assert torch.equal(corner[0, 0, 2:, 2:], images[0, 0, :2, :2]) and corner[0, 0, :2].sum() == 0
    # Offset (4, 3): 2 up and 1 left.
    assert torch.equal(corner[1, 0, :2, :3], images[1, 0, 2:, 1:]) and corner[1, 0, 2:].sum() == 0


def test_augmented_samples_are_windows_of_the_black_padded_image():
    split = _split(48, size=32, seed=7)
    loader = DeviceLoader(split, MEAN, STD, 16, augment=True, seed=11)
    offsets, flipped = set(), set()
    for images, labels in loader:
        for image, label in zip(images, labels, strict=True):
            # torchvision pads the PIL image with black, then normalises: pad the raw pixels, then normalise.
            padded = normalize(F.pad(split.images[label : label + 1], (4, 4, 4, 4)), MEAN, STD)[0]
            matches = []
            for row in range(9):
                for col in range(9):
                    window = padded[:, row : row + 32, col : col + 32]
                    matches += [(row, col, False)] if torch.equal(image, window) else []
                    matches += [(row, col, True)] if torch.equal(image, window.flip(-1)) else []
            assert len(matches) == 1, f"sample {int(label)} is no window of its padded image"
            offsets.add(matches[0][:2])
            flipped.add(matches[0][2])
    assert len(offsets) > 10 and flipped == {False, True}


def test_cpu_and_cuda_draw_the_same_batches():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    split = _split()
    on_cpu = list(DeviceLoader(split, MEAN, STD, 8, augment=True, seed=2))
    on_gpu = list(DeviceLoader(split, MEAN, STD, 8, augment=True, seed=2, device="cuda"))
    for (x_cpu, y_cpu), (x_gpu, y_gpu) in zip(on_cpu, on_gpu, strict=True):
        assert x_gpu.is_cuda and torch.equal(y_cpu, y_gpu.cpu()) and torch.allclose(x_cpu, x_gpu.cpu())


def test_loader_rejects_bad_settings():
    with pytest.raises(ZsktError, match="batch size"):
        DeviceLoader(_split(), MEAN, STD, 0)
    with pytest.raises(ZsktError, match="seed"):
        DeviceLoader(_split(), MEAN, STD, 8, seed=-1)
    with pytest.raises(ValueError, match="3-channel images with 1 means"):
        DeviceLoader(_split(), (0.5,), (0.5,), 8)


# -------------------------------------------------------------------------------------- select_per_class


def _labels(n=500, seed=0):
    return torch.randint(0, 10, (n,), generator=torch.Generator().manual_seed(seed))


def test_exactly_m_per_class():
    labels = _labels()
    indices = select_per_class(labels, 7, seed=0)
    assert indices.dtype == torch.int64 and torch.equal(indices, indices.sort().values)
    assert len(indices.unique()) == 70 and int(indices.min()) >= 0 and int(indices.max()) < len(labels)
    assert torch.bincount(labels[indices], minlength=10).tolist() == [7] * 10


def test_first_m_of_each_class_in_the_seeded_visit_order():
    # The authors' loop, written out: walk a seeded permutation and keep an image while its class is short.
    labels, m, seed = _labels(200, seed=1), 4, 9
    kept, counts = [], [0] * 10
    for index in torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed)).tolist():
        if counts[int(labels[index])] < m:
            counts[int(labels[index])] += 1
            kept.append(index)
    assert select_per_class(labels, m, seed).tolist() == sorted(kept)


def test_stable_per_seed_and_different_across_seeds():
    labels = _labels()
    assert torch.equal(select_per_class(labels, 5, seed=3), select_per_class(labels, 5, seed=3))
    assert not torch.equal(select_per_class(labels, 5, seed=3), select_per_class(labels, 5, seed=4))


def test_minus_one_or_none_means_all():
    labels = _labels(30)
    assert torch.equal(select_per_class(labels, -1, seed=0), torch.arange(30))
    assert torch.equal(select_per_class(labels, None, seed=0), torch.arange(30))


def test_too_few_images_in_a_class():
    labels = torch.tensor([0] * 5 + [1] * 2 + [2] * 5)
    with pytest.raises(ZsktError, match="cannot take 3 images per class: class 1 has 2"):
        select_per_class(labels, 3, seed=0)
    with pytest.raises(ZsktError, match="class 3 has 0"):
        select_per_class(labels, 2, seed=0, num_classes=4)
    with pytest.raises(ZsktError, match="positive integer or -1"):
        select_per_class(labels, 0, seed=0)
