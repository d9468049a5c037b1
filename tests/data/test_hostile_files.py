"""Hostile image files and folders: refused or read at a bounded cost, never a hang.

A file whose header declares a huge image (a decompression bomb) is refused
before it is decoded; every read costs memory in proportion to the declared
size, capped by ``PIL.Image.MAX_IMAGE_PIXELS``, and to the output size (the
peak RSS of a child process is measured). Folders with symbolic-link loops,
links across classes or special files list each real file once, under its
own class; a named pipe is never opened in a way that blocks.
"""

import json
import os
import struct
import subprocess
import sys
import threading
import warnings
import zlib

import numpy as np
import pytest
from numpy.testing import assert_array_equal
from PIL import Image

from skcueco import ImageSource
from skcueco.data import imageio
from skcueco.data.imageio import decode, fit_size, scan_folder

POSIX = pytest.mark.skipif(not hasattr(os, "mkfifo") or not hasattr(os, "symlink"),
                           reason="named pipes and symbolic links")


def zero_png(path, width, height, depth=8, colour_type=0, channels=1):
    """Write an all-zero PNG without building its pixels: a few kB for 10^8 pixels.

    The zlib stream repeats one deflated band of rows, each band ended by a
    full flush (byte-aligned, no reference to earlier data), so any number
    of copies is a valid stream; the Adler-32 of n zero bytes is
    ``(n mod 65521) << 16 | 1``.
    """
    row = 1 + width * channels * depth // 8  # the filter byte, then the pixels

    def deflated(n_bytes):
        raw = zlib.compressobj(9, zlib.DEFLATED, -15)
        return raw.compress(bytes(n_bytes)) + raw.flush(zlib.Z_FULL_FLUSH)

    band = max(1, min(height, (1 << 20) // row))
    body = deflated(band * row) * (height // band)
    if height % band:
        body += deflated(height % band * row)
    end = zlib.compressobj(9, zlib.DEFLATED, -15).flush()  # an empty final block
    stream = b"\x78\xda" + body + end + struct.pack(">I", (row * height % 65521) << 16 | 1)

    def chunk(tag, data):
        return (struct.pack(">I", len(data)) + tag + data
                + struct.pack(">I", zlib.crc32(tag + data)))

    header = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", stream)
                + chunk(b"IEND", b""))
    return str(path)


def in_thread(function, *args, timeout=20):
    """``function(*args)`` in a daemon thread; fails the test if it does not return."""
    result = {}

    def run():
        try:
            result["value"] = function(*args)
        except BaseException as exc:  # re-raised in the test's thread
            result["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"{function.__name__} did not return in {timeout} s"
    if "error" in result:
        raise result["error"]
    return result["value"]


# -- 1. decompression bombs: memory bounded by the limit and the output size -------

CHILD = r"""
import json, sys
from PIL import Image
from skcueco.data.imageio import decode

def status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024

results = []
for path, mode, size, limit in json.loads(sys.argv[1]):
    Image.MAX_IMAGE_PIXELS = limit
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # the peak (VmHWM) starts again from the current RSS
    baseline = status("VmRSS")
    try:
        row = decode(path, "file", mode, tuple(size))
        error = None
    except Exception as exc:
        row, error = None, f"{type(exc).__name__}: {exc}"
    results.append({"peak": status("VmHWM") - baseline, "error": error,
                    "max": None if row is None else int(row.max())})
print(json.dumps(results))
"""


def peak_memory(cases):
    """For each ``(path, mode, size, limit)``, the peak RSS that decoding it adds.

    All in one child process that has imported the library: its RSS after
    the import is the baseline, and its peak is reset before each case. A
    fixed glibc mmap threshold returns freed buffers to the system, so one
    case does not hide the next in memory the allocator kept.
    """
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(128 * 1024))
    done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(cases)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


MB = 1 << 20


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"),
                    reason="peak RSS measured through Linux /proc")
def test_decompression_bombs_cost_memory_by_the_limit_and_the_output_size(tmp_path):
    default = Image.MAX_IMAGE_PIXELS
    bombs = [
        # ~200 kB, 10^8 16-bit pixels: 0.2 GB decoded, 1.9 GB through float64 copies
        zero_png(tmp_path / "deep.png", 10_000, 10_000, depth=16),
        # ~400 kB, 1.44 * 10^8 RGB pixels: past Pillow's warning, not its error
        zero_png(tmp_path / "wide.png", 12_000, 12_000, colour_type=2, channels=3),
    ]
    # 10^6 x 1 pixels, under the limit: scaled to cover 32 x 32 it would be
    # 32,000,000 x 32 (1 GB) before the crop
    strip = zero_png(tmp_path / "strip.png", 1_000_000, 1)
    # at a limit of 4 * 10^6 pixels, images of exactly that size are read
    limit = 4_000_000
    deep = zero_png(tmp_path / "deep_small.png", 2000, 2000, depth=16)
    rgba = zero_png(tmp_path / "rgba.png", 2000, 2000, colour_type=6, channels=4)
    cases = [[bombs[0], "L", [32, 32], default], [bombs[1], "RGB", [32, 32], default],
             [strip, "L", [32, 32], default],
             [deep, "L", [32, 32], limit], [rgba, "RGB", [32, 32], limit]]
    found = peak_memory(cases)

    for path, result in zip(bombs, found[:2]):
        # refused from the header: nothing decoded, the file and the limit named
        assert result["error"] is not None and path in result["error"], result
        assert "PIL.Image.MAX_IMAGE_PIXELS" in result["error"]
        assert f"{default:,}" in result["error"]
        assert result["peak"] < 16 * MB, result
    strip_read, deep_read, rgba_read = found[2:]
    assert strip_read["error"] is None and strip_read["max"] == 0
    assert strip_read["peak"] < 16 * MB, strip_read
    assert deep_read["error"] is None and rgba_read["error"] is None
    # 16-bit pixels become 8-bit ones without float copies: 2 bytes decoded,
    # 1 converted and 1 of the 8-bit image, plus bands of rows (float64 took 21)
    assert deep_read["peak"] < 6 * limit + 8 * MB, deep_read
    # the bound of docs/reliability.rst: 12 bytes per declared pixel and 128
    # per output pixel (RGBA decoded and converted to RGB: 4 + 4 bytes)
    assert rgba_read["peak"] < 12 * limit + 128 * 32 * 32 + 8 * MB, rgba_read


def test_the_limit_is_pillows_and_can_be_raised(tmp_path, monkeypatch):
    deep = zero_png(tmp_path / "deep.png", 120, 100, depth=16)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 12_000)  # exactly 120 x 100: read
    assert_array_equal(decode(deep, "x", "L", (8, 8)), np.zeros(64, np.uint8))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 11_999)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # Pillow's own
        with pytest.raises(ValueError, match=r"120 x 100 = 12,000 pixels.*11,999") as info:
            decode(deep, "x", "L", (8, 8))
    assert deep in str(info.value) and "PIL.Image.MAX_IMAGE_PIXELS" in str(info.value)
    # past twice the limit Pillow refuses the header itself: the same error
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5_000)
    with pytest.raises(ValueError, match=r"declares 12,000 pixels, more than the limit of 5,000"):
        ImageSource([deep, deep], image_size=8)[:]
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # no limit
    assert ImageSource([deep], image_size=8)[0].shape == (64,)


def test_an_oversized_jpeg_is_decoded_at_a_reduced_scale(tmp_path, monkeypatch):
    y, x = np.mgrid[0:200, 0:200]
    smooth = np.stack([x, y, (x + y) // 2], axis=-1).astype(np.uint8)
    Image.fromarray(smooth).save(tmp_path / "big.jpg", quality=95)
    Image.fromarray(smooth).save(tmp_path / "big.png")
    full = decode(str(tmp_path / "big.jpg"), "x", "RGB", (32, 32)).astype(int)

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20_000)  # 200 x 200 is over it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        # libjpeg decodes 1/4 of each side (50 x 50, still covering 32 x 32)
        drafted = decode(str(tmp_path / "big.jpg"), "x", "RGB", (32, 32)).astype(int)
        assert np.abs(drafted - full).mean() < 3
        with pytest.raises(ValueError, match="big.png.*20,000"):  # no draft for a PNG
            decode(str(tmp_path / "big.png"), "x", "RGB", (32, 32))
        with pytest.raises(ValueError, match="big.jpg.*20,000"):  # 1/8 would not cover
            decode(str(tmp_path / "big.jpg"), "x", "RGB", (190, 190))


def test_sixteen_bit_values_round_exactly_as_before():
    values = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    expected = np.rint(values / 257.0).astype(np.uint8).reshape(-1)
    assert_array_equal(decode(Image.fromarray(values), "x", "L", (256, 256)), expected)
    big_endian = Image.frombytes("I;16B", (256, 256), values.astype(">u2").tobytes())
    assert_array_equal(decode(big_endian, "x", "L", (256, 256)), expected)


def test_an_extreme_aspect_ratio_resamples_only_the_part_kept():
    rng = np.random.RandomState(0)
    strip = Image.fromarray(rng.randint(0, 256, (3, 400)).astype(np.uint8))
    # what resizing the whole image to cover 16 x 16 (2134 x 16), then
    # cropping the centre, gives
    whole = strip.resize((2133, 16), Image.Resampling.BILINEAR).crop((1058, 0, 1074, 16))
    kept = fit_size(strip, (16, 16))
    assert kept.size == (16, 16)
    diff = np.abs(np.asarray(kept, int) - np.asarray(whole, int))
    assert diff.max() <= 1 and diff.mean() < 0.5


# -- 2. folders: links followed once, special files skipped, never a hang ----------

def _class_folders(root, n=8):
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for i in range(n):
            Image.new("L", (4, 4), 10 * i + (name == "b")).save(root / name / f"{i}.png")


def _listing(root):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        files, targets, classes = in_thread(scan_folder, root)
    rel = [os.path.relpath(f, root) for f in files]
    return rel, [classes[t] for t in targets], " ".join(str(w.message) for w in caught)


@POSIX
def test_link_loops_list_each_image_once_under_its_own_class(tmp_path):
    root = tmp_path / "root"
    _class_folders(root)
    os.symlink(".", root / "a" / "loop")
    os.symlink(".", root / "a" / "loop2")  # two loops in one folder: a hang before
    os.symlink("..", root / "b" / "up")
    (root / "b" / "sub").mkdir()
    Image.new("L", (4, 4), 99).save(root / "b" / "sub" / "deep.png")
    os.symlink("../../a", root / "b" / "sub" / "to_a")

    files, labels, message = _listing(root)
    expected = [f"a/{i}.png" for i in range(8)] + [f"b/{i}.png" for i in range(8)]
    assert files == expected + ["b/sub/deep.png"]
    assert labels == ["a"] * 8 + ["b"] * 9
    assert "a/loop (a link to a folder that contains it: a loop)" in message
    assert "a/loop2 (a link to a folder that contains it: a loop)" in message
    assert "b/up (a link to a folder that contains it: a loop)" in message
    assert "b/sub/to_a (a link to a folder inside the image folder" in message
    with pytest.warns(UserWarning, match="Skipped 4 entries under"):
        assert len(ImageSource(root)) == 17


@POSIX
def test_links_across_classes_and_outside_the_folder(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    _class_folders(root, n=2)
    (root / "b" / "sub").mkdir()
    Image.new("L", (4, 4)).save(root / "b" / "sub" / "s.png")
    os.symlink("../b/0.png", root / "a" / "copy.png")  # a file of class b
    os.symlink("../b/sub", root / "a" / "b_sub")        # a folder of class b
    (outside / "more").mkdir(parents=True)
    Image.new("L", (4, 4)).save(outside / "e.png")
    Image.new("L", (4, 4)).save(outside / "more" / "m.png")
    os.symlink(outside / "more", root / "a" / "ext")    # outside the folder: followed
    os.symlink(outside, root / "b" / "ext")             # again, partly: once
    os.symlink(outside / "e.png", root / "b" / "e_link.png")  # a file listed already

    files, labels, message = _listing(root)
    assert list(zip(files, labels)) == [
        ("a/0.png", "a"), ("a/1.png", "a"), ("a/ext/m.png", "a"),
        ("b/0.png", "b"), ("b/1.png", "b"), ("b/ext/e.png", "b"), ("b/sub/s.png", "b"),
    ]
    assert "a/copy.png (a link to a file listed already)" in message
    assert "a/b_sub (a link to a folder inside the image folder" in message


@POSIX
def test_a_class_folder_linked_to_another_is_not_listed_twice(tmp_path):
    root = tmp_path / "root"
    _class_folders(root, n=2)
    os.symlink("b", root / "alias")   # sorts before b: b keeps its own files
    os.symlink("..", root / "all")    # the folder itself
    files, labels, message = _listing(root)
    assert list(zip(files, labels)) == [("a/0.png", "a"), ("a/1.png", "a"),
                                        ("b/0.png", "b"), ("b/1.png", "b")]
    assert "alias (a link to a folder listed already)" in message
    assert "all (a link to a folder that contains the image folder)" in message


def test_a_plain_folder_lists_as_before(tmp_path):
    # files of a folder, then its sorted subfolders, depth first (as os.walk)
    for rel in ("c/z.png", "c/a.jpg", "c/m/x.png", "c/m/k/y.PNG", "c/b/w.bmp", "c/note.txt",
                "d/q.webp", ".hidden/h.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4)).save(tmp_path / rel, format="PNG")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing skipped, nothing to say
        files, targets, classes = scan_folder(tmp_path)
    assert [os.path.relpath(f, tmp_path) for f in files] == [
        "c/a.jpg", "c/z.png", "c/b/w.bmp", "c/m/x.png", "c/m/k/y.PNG", "d/q.webp"]
    assert classes == ["c", "d"] and targets.tolist() == [0, 0, 0, 0, 0, 1]


@POSIX
def test_a_named_pipe_is_skipped_when_listed_and_refused_when_named(tmp_path):
    root = tmp_path / "root"
    _class_folders(root, n=2)
    pipe = root / "a" / "pipe.png"
    os.mkfifo(pipe)  # opening it for reading would wait for a writer forever
    files, labels, message = _listing(root)
    assert "a/pipe.png" not in files and len(files) == 4
    assert "a/pipe.png (a named pipe, not a regular file)" in message
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rows = in_thread(lambda: ImageSource(root)[:])  # what fit reads
    assert rows.shape == (4, 16)

    for read in (lambda: decode(str(pipe), "x", "L", (4, 4)),
                 lambda: ImageSource([str(pipe)] * 2, image_size=4)):  # the header probe
        with pytest.raises(ValueError, match=r"pipe\.png.*a named pipe, not a regular file"):
            in_thread(read)
    with pytest.raises(ValueError, match="a directory, not a regular file"):
        decode(str(root), "x", "L", (4, 4))
    if os.path.exists("/dev/zero"):  # endless
        with pytest.raises(ValueError, match="a character device"):
            in_thread(decode, "/dev/zero", "x", "L", (4, 4))


@POSIX
def test_a_file_swapped_for_a_pipe_after_the_check_does_not_block(tmp_path, monkeypatch):
    pipe = str(tmp_path / "swapped.png")
    os.mkfifo(pipe)
    regular = os.stat(__file__)
    real_stat = os.stat

    def stale_stat(path, *args, **kwargs):  # as if it was a regular file a moment ago
        return regular if os.fspath(path) == pipe else real_stat(path, *args, **kwargs)

    monkeypatch.setattr(imageio.os, "stat", stale_stat)
    with pytest.raises(ValueError, match="a named pipe"):
        in_thread(decode, pipe, "x", "L", (4, 4))
