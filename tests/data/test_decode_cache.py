"""ImageSource keeps decoded rows: each image is read once per fit, results never change."""

import errno
import gc
import multiprocessing
import os
import pickle
import re
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from numpy.testing import assert_array_equal
from PIL import Image
from torch.utils.data import BatchSampler, DataLoader, SequentialSampler

from skcueco import CueCoEmbedder, ImageSource
from skcueco.callbacks import Callback
from skcueco.data import sources
from skcueco.data.loaders import ArrayBatches, make_loader

N = 48
WIDTH = 8 * 8 * 3


@pytest.fixture(scope="module")
def pixels():
    return np.random.RandomState(0).randint(0, 256, size=(N, 8, 8, 3)).astype(np.uint8)


@pytest.fixture(scope="module")
def png_paths(tmp_path_factory, pixels):
    folder = tmp_path_factory.mktemp("png")
    paths = [folder / f"img{i:02d}.png" for i in range(N)]
    for path, image in zip(paths, pixels):
        Image.fromarray(image).save(path)
    return [str(p) for p in paths]


@pytest.fixture
def count_decodes(monkeypatch):
    """A Counter of decoded items, filled by every call of the real decoder."""
    counts = Counter()
    real = sources.decode

    def counting(item, *args):
        counts[str(item)] += 1
        return real(item, *args)

    monkeypatch.setattr(sources, "decode", counting)
    return counts


def _files(folder):
    return sorted(p.name for p in Path(folder).iterdir())


def _fit(X, fast_params, **params):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tiny random data may look collapsed
        return CueCoEmbedder(**fast_params(**params)).fit(X)


def _epoch(source, batch_size=16, num_workers=0):
    loader = make_loader(source, batch_size=batch_size, shuffle=False,
                         num_workers=num_workers)
    return np.concatenate([b.numpy() for b in loader])


# ------------------------------------------------------------------ fit


def test_fit_from_files_decodes_each_image_once(fast_params, png_paths, count_decodes):
    # the clustering warm-up makes the first epoch the first read of the rows
    params = dict(max_epochs=3, cluster_warmup=1, batch_size=16, queue_size=32)
    _fit(png_paths, fast_params, **params)
    assert sorted(count_decodes) == sorted(png_paths)
    assert set(count_decodes.values()) == {1}
    count_decodes.clear()
    _fit(ImageSource(png_paths, cache=False), fast_params, **params)
    assert all(count_decodes[p] >= 3 for p in png_paths)  # once per epoch at least


@pytest.mark.parametrize("setting", [dict(cache="memory"), dict(cache="disk"),
                                     dict(cache="auto", cache_budget=0),
                                     dict(cache="auto")])
def test_cache_never_changes_the_model(fast_params, png_paths, pixels, setting, tmp_path):
    params = dict(max_epochs=2, cluster_warmup=1, batch_size=16, queue_size=32)
    reference = _fit(ImageSource(png_paths, cache=False), fast_params, **params)
    source = ImageSource(png_paths, cache_dir=tmp_path, **setting)
    cached = _fit(source, fast_params, **params)
    assert source._row_cache().filled.all()  # every row was kept
    assert_array_equal(cached.transform(png_paths), reference.transform(png_paths))
    assert_array_equal(cached.transform(source), reference.transform(png_paths))
    assert_array_equal(cached.cluster_centers_, reference.cluster_centers_)
    # the array of the same pixels trains the same model too
    from_array = _fit(pixels, fast_params, **params)
    assert_array_equal(cached.transform(pixels), from_array.transform(pixels))


def test_disk_cache_file_exists_while_training_and_goes_with_the_source(
        fast_params, png_paths, tmp_path):
    seen = []

    class ListFolder(Callback):
        def on_epoch_end(self, trainer, epoch, logs):
            seen.append(_files(tmp_path))

    source = ImageSource(png_paths, cache="auto", cache_budget=N * WIDTH - 1,
                         cache_dir=tmp_path)
    _fit(source, fast_params, max_epochs=2, callbacks=[ListFolder()])
    assert len(seen) == 2 and seen[0] == seen[1] and len(seen[0]) == 1
    assert re.fullmatch(r"skcueco-images-.+\.cache", seen[0][0])
    assert (tmp_path / seen[0][0]).stat().st_size == N * (WIDTH + 1)  # rows and flags
    del source
    gc.collect()
    assert _files(tmp_path) == []


# ------------------------------------------------------------------ where rows go


def test_auto_keeps_rows_only_once_read_for_training(png_paths, pixels, tmp_path,
                                                      count_decodes):
    rows = pixels.reshape(N, -1)
    source = ImageSource(png_paths, cache_dir=tmp_path)  # cache="auto"
    assert_array_equal(source[:], rows)
    assert_array_equal(source[:], rows)  # transform-like reads keep nothing
    assert set(count_decodes.values()) == {2} and source._store is None
    count_decodes.clear()
    assert_array_equal(_epoch(source), rows)
    assert_array_equal(_epoch(source), rows)
    assert_array_equal(source[::-1], rows[::-1])
    assert set(count_decodes.values()) == {1}
    assert source._store.path is None and _files(tmp_path) == []  # 9 KB: in memory

    over_budget = ImageSource(png_paths, cache_budget=N * WIDTH - 1, cache_dir=tmp_path)
    assert _files(tmp_path) == []  # nothing made before training reads it
    assert_array_equal(_epoch(over_budget), rows)
    assert [str(tmp_path / f) for f in _files(tmp_path)] == [over_budget._store.path]
    del over_budget
    gc.collect()
    assert _files(tmp_path) == []


@pytest.mark.parametrize("cache", ["memory", "disk"])
def test_explicit_cache_keeps_rows_from_the_first_read(png_paths, pixels, tmp_path,
                                                        count_decodes, cache):
    rows = pixels.reshape(N, -1)
    source = ImageSource(png_paths, cache=cache, cache_dir=tmp_path)
    for _ in range(2):  # cold, then warm: the same rows in every indexing form
        assert_array_equal(source[3], rows[3])
        assert_array_equal(source[-1], rows[-1])
        assert_array_equal(source[2:9:3], rows[2:9:3])
        assert_array_equal(source[np.array([4, 0, 4])], rows[[4, 0, 4]])
        mask = np.arange(N) % 5 == 0
        assert_array_equal(source[mask], rows[mask])
        assert source[[]].shape == (0, WIDTH)
    assert max(count_decodes.values()) == 1
    assert_array_equal(np.asarray(source), rows)
    assert len(_files(tmp_path)) == (cache == "disk")


def test_views_and_copies_keep_caches_of_their_own(png_paths, pixels, tmp_path):
    source = ImageSource(png_paths, cache="memory")
    source[:]
    smaller = source.with_format(image_size=4)
    assert smaller._store is None
    assert_array_equal(smaller[:], ImageSource(png_paths, image_size=4, cache=False)[:])
    assert smaller[:].shape == (N, 4 * 4 * 3)
    gray = source.with_format(mode="L")
    assert_array_equal(gray[:5], ImageSource(png_paths, mode="L", cache=False)[:5])
    part = source.take([5, 1])
    assert part._store is None and part._cache == "memory"
    assert_array_equal(part[:], pixels.reshape(N, -1)[[5, 1]])
    clone = pickle.loads(pickle.dumps(source))
    assert clone._store is None  # a pickle holds the paths, not the cache
    assert_array_equal(clone[:], source[:])
    disk = ImageSource(png_paths, cache="disk", cache_dir=tmp_path)
    disk[:3]
    assert_array_equal(pickle.loads(pickle.dumps(disk))[:3], disk[:3])
    assert len(_files(tmp_path)) == 1  # the copy's cache starts when it is read


def test_a_source_pickled_without_cache_settings_still_reads(png_paths, pixels):
    source = ImageSource(png_paths)
    state = source.__getstate__()
    for key in ("_cache", "_cache_budget", "_cache_dir", "_store", "_training"):
        del state[key]
    old = ImageSource.__new__(ImageSource)
    old.__setstate__(state)
    assert old._cache is False
    assert_array_equal(_epoch(old), pixels.reshape(N, -1))


# ------------------------------------------------------------------ files that change


def test_a_file_changed_or_deleted_after_its_first_read(tmp_path, pixels):
    folder = tmp_path / "images"
    folder.mkdir()
    paths = [str(folder / f"{i}.png") for i in range(4)]
    for path, image in zip(paths, pixels[:4]):
        Image.fromarray(image).save(path)
    cached = ImageSource(paths, cache="memory")
    uncached = ImageSource(paths, cache=False)
    first = cached[:]
    Image.fromarray(pixels[10]).save(paths[0])  # replaced
    os.remove(paths[1])  # deleted
    # every epoch trains on the images as first read
    assert_array_equal(cached[:], first)
    assert_array_equal(_epoch(cached, batch_size=2), first)
    with pytest.raises(FileNotFoundError, match=re.escape(paths[1])):
        uncached[:]
    assert_array_equal(uncached[[0]], pixels[10].reshape(1, -1))
    # a row that failed to read is not kept: it fails again, naming the file
    fresh = ImageSource(paths, cache="memory", image_size=8, mode="RGB")
    with pytest.raises(FileNotFoundError, match=re.escape(paths[1])):
        fresh[:]
    with pytest.raises(FileNotFoundError, match=re.escape(paths[1])):
        fresh[[1]]
    assert_array_equal(fresh[[0, 2]], np.stack([pixels[10], pixels[2]]).reshape(2, -1))


# ------------------------------------------------------------------ loader workers


@pytest.mark.skipif(multiprocessing.get_start_method(allow_none=False) != "fork",
                    reason="loader workers are forked only where fork is the start method")
@pytest.mark.parametrize("cache", ["memory", "disk"])
def test_forked_loader_workers_fill_the_parents_cache(png_paths, pixels, tmp_path, cache):
    source = ImageSource(png_paths, cache=cache, cache_dir=tmp_path)
    assert_array_equal(_epoch(source, num_workers=2), pixels.reshape(N, -1))
    assert source._store.filled.all()  # decoded in the workers, kept here
    assert_array_equal(source._store.rows, pixels.reshape(N, -1))


def test_spawned_loader_workers_share_the_disk_cache(png_paths, pixels, tmp_path):
    source = ImageSource(png_paths, cache="disk", cache_dir=tmp_path)
    source._keep_decoded()
    batches = BatchSampler(SequentialSampler(range(N)), 16, False)
    loader = DataLoader(ArrayBatches(source), sampler=batches, batch_size=None,
                        num_workers=1, multiprocessing_context="spawn")
    assert_array_equal(np.concatenate([b.numpy() for b in loader]), pixels.reshape(N, -1))
    del loader
    assert source._store.filled.all()
    assert len(_files(tmp_path)) == 1  # the worker left the parent's file in place


# ------------------------------------------------------------------ settings


def test_bad_cache_settings_are_named(png_paths, tmp_path):
    with pytest.raises(ValueError, match="cache must be one of"):
        ImageSource(png_paths, cache="ram")
    with pytest.raises(ValueError, match="cache must be one of"):
        ImageSource(png_paths, cache=True)
    with pytest.raises(TypeError, match="cache_budget must be an int"):
        ImageSource(png_paths, cache_budget="1GB")
    with pytest.raises(ValueError, match="cache_budget must be >= 0"):
        ImageSource(png_paths, cache_budget=-1)
    with pytest.raises(ValueError, match="not an existing folder"):
        ImageSource(png_paths, cache_dir=tmp_path / "nowhere")
    with pytest.raises(ValueError, match="not an existing folder"):
        ImageSource.from_folder(tmp_path, cache_dir=png_paths[0])


def test_a_cache_that_cannot_be_made_warns_and_decodes(png_paths, pixels, tmp_path,
                                                       monkeypatch):
    def full_disk(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full_disk, raising=False)
    monkeypatch.setattr(os, "ftruncate", full_disk)
    source = ImageSource(png_paths, cache="disk", cache_dir=tmp_path)
    with pytest.warns(RuntimeWarning, match="No space left on device.*cache_dir"):
        rows = source[:]
    assert_array_equal(rows, pixels.reshape(N, -1))
    assert source._store is False
    assert _files(tmp_path) == []  # the file begun is removed
    assert_array_equal(_epoch(source), pixels.reshape(N, -1))  # no second warning
