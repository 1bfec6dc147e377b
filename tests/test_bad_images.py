"""Loading: every broken file gives ImageLoadError with its reason; awkward files are handled."""

from __future__ import annotations

import io
import os
import random
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from badfiles import Case, encode, make_corpus, photo
from clip_rt.bundle.manifest import ImageConfig
from clip_rt.errors import ImageLoadError, InputError
from clip_rt.inputs.images import LoadedImage, array_to_pil, open_image
from clip_rt.inputs.preprocess import Preprocessor

# bomb_warning.png: PIL warns (100 Mpx is under 2x its limit) before open_image refuses it.
pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")

CFG = ImageConfig(size=(224, 224), mean=(0.48145466, 0.4578275, 0.40821073), std=(0.26862954, 0.26130258, 0.27577711))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Case]:
    return make_corpus(tmp_path_factory.mktemp("badfiles"))


CORPUS_NAMES = [
    "empty.jpg",
    "truncated.jpg",
    "truncated.png",
    "page.jpg",
    "notes.png",
    "drawing.jpg",
    "noise.jpg",
    "bomb.png",
    "bomb_warning.png",
    "dangling.jpg",
    "missing.jpg",
    "folder.jpg",
    "cmyk.jpg",
    "ycck.jpg",
    "gray16.png",
    "gray16.tif",
    "int32.tif",
    "float.tif",
    "palette_transparent.png",
    "la.png",
    "rgba.png",
    "bilevel.png",
    "one_pixel.png",
    "wide.png",
    "tall.png",
    "animated.gif",
    "animated.webp",
    "rotated.jpg",
    "caf\\xe9.jpg",
]  # "unreadable.jpg" has its own test: root reads anything


def test_corpus_names_cover_the_generator(corpus: dict[str, Case]) -> None:
    assert set(corpus) == set(CORPUS_NAMES) | {"unreadable.jpg"}


@pytest.mark.parametrize("name", CORPUS_NAMES)
def test_each_file_fails_with_its_reason_or_is_handled(corpus: dict[str, Case], name: str) -> None:
    case = corpus[name]
    if case.reason is not None:
        with pytest.raises(ImageLoadError) as info:
            open_image(case.path)
        assert case.reason in str(info.value)
        assert info.value.reason in str(info.value)  # type: ignore[attr-defined]
        assert str(info.value).startswith(info.value.source + ": ")  # type: ignore[attr-defined]
        return
    loaded = open_image(case.path)
    assert isinstance(loaded, LoadedImage)
    if case.mode:
        assert loaded.image.mode == case.mode
    if case.note:
        assert case.note in loaded.notes
    for strict in (False, True):
        x = Preprocessor(CFG, strict=strict)(loaded)
        assert x.shape == (3, 224, 224) and x.dtype == np.float32 and np.isfinite(x).all()


def test_unreadable_file_says_permission_denied() -> None:
    root = Path(tempfile.mkdtemp(prefix="clip-rt-perm-"))
    try:
        os.chmod(root, 0o755)  # let the unprivileged user reach the file, not read it
        target = root / "secret.jpg"
        target.write_bytes(encode(photo(), "JPEG"))
        os.chmod(target, 0)
        if os.geteuid() == 0:  # root reads anything: drop to nobody for the attempt
            os.seteuid(65534)
            try:
                with pytest.raises(ImageLoadError, match="permission denied"):
                    open_image(target)
            finally:
                os.seteuid(0)
        else:
            with pytest.raises(ImageLoadError, match="permission denied"):
                open_image(target)
    finally:
        shutil.rmtree(root)


def test_non_utf8_name_loads_as_bytes_and_as_surrogate_escaped_str(corpus: dict[str, Case]) -> None:
    raw = corpus["caf\\xe9.jpg"].path
    assert isinstance(raw, bytes)
    by_bytes = open_image(raw)
    by_str = open_image(os.fsdecode(raw))  # 'caf\udce9.jpg'
    assert by_bytes.source == by_str.source and by_bytes.source.endswith("caf\\xe9.jpg")
    by_bytes.source.encode("utf-8")  # printable label: no lone surrogates
    assert np.array_equal(np.asarray(by_bytes.image), np.asarray(by_str.image))
    missing = os.fsencode(os.path.dirname(raw)) + b"/gon\xe9.jpg"
    with pytest.raises(ImageLoadError, match=r"gon\\xe9\.jpg: no such file"):
        open_image(missing)


def test_mixed_batch_keeps_every_good_image(corpus: dict[str, Case]) -> None:
    names = CORPUS_NAMES
    pp = Preprocessor(CFG)
    result = pp.try_batch([corpus[n].path for n in names])
    good = [i for i, n in enumerate(names) if corpus[n].reason is None]
    bad = [i for i, n in enumerate(names) if corpus[n].reason is not None]
    assert result.indices == good
    assert [i for i, _ in result.failures] == bad
    for i, err in result.failures:
        assert corpus[names[i]].reason in str(err)
    assert result.pixels.shape == (len(good), 3, 224, 224) and result.pixels.flags["C_CONTIGUOUS"]
    assert np.isfinite(result.pixels).all()
    for row, i in enumerate(result.indices):  # same as one at a time
        assert np.array_equal(result.pixels[row], pp(corpus[names[i]].path))
    assert result.notes[names.index("animated.gif")] == ["animated image: first frame of 12 used"]
    with pytest.raises(ImageLoadError) as info:
        pp.batch([corpus[n].path for n in names])
    message = str(info.value)
    assert message.startswith(f"{len(bad)} of {len(names)} images failed")
    assert all(f"[{i}]" in message for i in bad)


def test_no_file_handles_leak(corpus: dict[str, Case]) -> None:
    psutil = pytest.importorskip("psutil")
    proc = psutil.Process()
    names = (
        "truncated.jpg",
        "page.jpg",
        "animated.gif",
        "animated.webp",
        "gray16.tif",
        "rgba.png",
        "empty.jpg",
        "bomb.png",
    )
    paths = [corpus[n].path for n in names]
    for p in paths:  # warm up lazy imports of PIL plugins
        try:
            open_image(p)
        except ImageLoadError:
            pass
    before = proc.num_fds()
    opens = int(os.environ.get("CLIP_RT_FD_OPENS", "2000"))  # docs: 100000
    for _ in range(opens // len(paths)):
        for p in paths:
            try:
                open_image(p)
            except ImageLoadError:
                pass
    assert proc.num_fds() == before


def test_other_sources(corpus: dict[str, Case]) -> None:
    path = corpus["rgba.png"].path
    data = Path(path).read_bytes()
    from_path = open_image(path)
    for source in (data, bytearray(data), memoryview(data), io.BytesIO(data), Image.open(path)):
        loaded = open_image(source)
        assert loaded.image.mode == "RGBA" and loaded.image.size == from_path.image.size
        assert np.array_equal(np.asarray(loaded.image), np.asarray(from_path.image))
    assert open_image(data).source == "<bytes>"
    with open(path, "rb") as f:
        assert open_image(f).source == from_path.source
        assert not f.closed  # the caller's file stays the caller's

    class Pipe(io.RawIOBase):  # not seekable: read whole
        def __init__(self, payload: bytes) -> None:
            self._buf = io.BytesIO(payload)

        def readable(self) -> bool:
            return True

        def readinto(self, b) -> int:  # type: ignore[no-untyped-def]
            chunk = self._buf.read(len(b))
            b[: len(chunk)] = chunk
            return len(chunk)

    assert open_image(Pipe(data)).image.size == from_path.image.size
    with pytest.raises(ImageLoadError, match="empty data"):
        open_image(b"")
    with pytest.raises(ImageLoadError, match="looks like text/HTML"):
        open_image(io.BytesIO(b"<html>\n</html>\n"))


def test_wrong_types_and_arrays_say_what_was_expected() -> None:
    with pytest.raises(InputError, match="expected an image: a path .* got list"):
        open_image([1, 2, 3])  # type: ignore[arg-type]
    with pytest.raises(InputError, match=r"got shape \(4x4x2\)"):
        open_image(np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(InputError, match="got dtype int64"):
        open_image(np.zeros((4, 4), np.int64))
    with pytest.raises(InputError, match=r"values in \[0, 1\]; got values in \[-1, 2\]"):
        open_image(np.array([[-1.0, 2.0]]))
    with pytest.raises(InputError, match="NaN"):
        open_image(np.array([[np.nan]], np.float32))
    with pytest.raises(InputError, match="at least 1x1"):
        open_image(np.zeros((0, 5, 3), np.uint8))
    # a bad item in a batch is reported, not fatal
    result = Preprocessor(CFG).try_batch([np.zeros((8, 8, 3), np.uint8), 42, np.ones((5, 7), np.float32)])
    assert result.indices == [0, 2] and isinstance(result.failures[0][1], InputError)


def test_numpy_arrays_map_to_the_documented_pil_images() -> None:
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    assert array_to_pil(rgb).mode == "RGB" and np.array_equal(np.asarray(array_to_pil(rgb)), rgb)
    assert array_to_pil(rgb[:, :, 0]).mode == "L"
    assert array_to_pil(rgb[:, :, :1]).mode == "L"
    assert array_to_pil(np.dstack([rgb, rgb[:, :, :1]])).mode == "RGBA"
    assert array_to_pil(rgb[:, ::-1]).mode == "RGB"  # non-contiguous views are fine
    floats = rgb.astype(np.float64) / 255.0
    assert np.array_equal(np.asarray(array_to_pil(floats)), rgb)
    assert np.array_equal(np.asarray(array_to_pil(floats.astype(np.float32))), rgb)


def test_pil_truncation_flag_is_left_alone(corpus: dict[str, Case]) -> None:
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    with pytest.raises(ImageLoadError):
        open_image(corpus["truncated.jpg"].path)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_lazy_pil_image_with_truncated_data_is_an_image_load_error(corpus: dict[str, Case]) -> None:
    lazy = Image.open(corpus["truncated.jpg"].path)  # header only: decoding happens in open_image
    with pytest.raises(ImageLoadError, match="cannot decode the image data"):
        open_image(lazy)
    lazy.close()


# -- damaged files found by byte flips (review: a corrupt TIFF ended the stream) ------------------
def small_image_bytes(fmt: str) -> bytes:
    """A 20x17 noise image encoded as *fmt* (small: the headers are a large share of the file)."""
    pixels = np.random.default_rng(0).integers(0, 256, (17, 20, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, fmt)
    return buf.getvalue()


def damaged_tiff() -> bytes:
    """The 20x17 TIFF with one bit flipped in its first IFD's entry count (byte 8): Pillow 13
    then reads a bogus 11th tag and raises ``TypeError: Missing dimensions`` from n_frames."""
    data = bytearray(small_image_bytes("TIFF"))
    data[8] ^= 1
    return bytes(data)


def flipped_variants(data: bytes, count: int, seed: int) -> list[bytes]:
    """*count* copies of *data*, each with 1-3 random bits flipped in its first 200 bytes
    (headers, IFDs, chunk and marker tables: where a flip reaches the parsers, not just pixels)."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        buf = bytearray(data)
        for _ in range(rng.randint(1, 3)):
            buf[rng.randrange(min(len(buf), 200))] ^= 1 << rng.randrange(8)
        out.append(bytes(buf))
    return out


def raw_pillow_error(data: bytes) -> type[BaseException] | None:
    """What plain Pillow raises for *data* when opened and read the way open_image does."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            getattr(img, "n_frames", 1)
            img.load()
    except Exception as exc:  # noqa: BLE001 - the point: see which exception types Pillow really raises
        return type(exc)
    return None


FUZZ_FORMATS = ("PNG", "JPEG", "TIFF", "GIF")
FUZZ_PER_FORMAT = 50  # 200 variants in all, ~1 s


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns about the bogus TIFF tags it skips
def test_tiff_with_a_damaged_ifd_is_an_image_load_error(tmp_path: Path) -> None:
    data = damaged_tiff()
    assert raw_pillow_error(data) is TypeError  # the case under test: not one of Pillow's usual errors
    with pytest.raises(ImageLoadError, match=r"<bytes>: .*TIFF.*TypeError: Missing dimensions"):
        open_image(data)
    path = tmp_path / "damaged.tif"
    path.write_bytes(data)
    with pytest.raises(ImageLoadError, match="damaged.tif: "):
        open_image(path)
    result = Preprocessor(CFG).try_batch([photo(), str(path), photo()])
    assert result.indices == [0, 2] and [i for i, _ in result.failures] == [1]


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_byte_flipped_images_load_or_fail_with_image_load_error() -> None:
    pre = Preprocessor(CFG)
    raw_errors: set[type] = set()
    outcomes = {"loaded": 0, "failed": 0}
    variants: list[bytes] = []
    for n, fmt in enumerate(FUZZ_FORMATS):
        variants += flipped_variants(small_image_bytes(fmt), FUZZ_PER_FORMAT, seed=n)
    for data in variants:
        raw = raw_pillow_error(data)
        if raw is not None:
            raw_errors.add(raw)
        try:
            pixels = pre(open_image(data))
        except ImageLoadError:
            outcomes["failed"] += 1
            continue
        assert pixels.shape == (3, 224, 224) and np.isfinite(pixels).all()
        outcomes["loaded"] += 1
    # The corpus reaches the odd cases (TypeError from TIFF) and both outcomes, or it tests nothing.
    assert TypeError in raw_errors, raw_errors
    assert outcomes["loaded"] > 0 and outcomes["failed"] > 0, outcomes
    result = pre.try_batch(variants)
    assert len(result.indices) == outcomes["loaded"] and len(result.failures) == outcomes["failed"]
    assert all(isinstance(err, ImageLoadError) for _, err in result.failures)


def test_try_batch_reports_an_unexpected_decoder_exception_on_its_item(monkeypatch: pytest.MonkeyPatch) -> None:
    import clip_rt.inputs.images as images_mod

    real_open = images_mod.open_image

    def open_or_explode(source, **kwargs):  # type: ignore[no-untyped-def]
        if isinstance(source, str) and source == "explodes.png":
            raise RuntimeError("decoder bug")
        return real_open(source, **kwargs)

    monkeypatch.setattr(images_mod, "open_image", open_or_explode)
    result = Preprocessor(CFG).try_batch([photo(), "explodes.png", photo()])
    assert result.indices == [0, 2]
    ((index, err),) = result.failures
    assert index == 1 and isinstance(err, ImageLoadError)
    assert str(err) == "explodes.png: unexpected error while reading the image (RuntimeError: decoder bug)"
    assert isinstance(err.__cause__, RuntimeError)

    def out_of_memory(source, **kwargs):  # type: ignore[no-untyped-def]
        if isinstance(source, str) and source == "huge.tif":
            raise MemoryError
        return real_open(source, **kwargs)

    # A file that cannot be decoded in the memory there is fails on its own, every time: it is
    # recorded, so that `--resume` moves past it instead of dying on it again.
    monkeypatch.setattr(images_mod, "open_image", out_of_memory)
    result = Preprocessor(CFG).try_batch([photo(), "huge.tif"])
    assert result.indices == [0]
    ((index, err),) = result.failures
    assert index == 1 and str(err).startswith("huge.tif: out of memory while decoding or preprocessing it")


@pytest.fixture(scope="module")
def fake_model(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    import clip_rt
    from clip_rt_fixtures.fake_bundle import build_fake_bundle

    return clip_rt.load(build_fake_bundle(tmp_path_factory.mktemp("fake") / "fake-clip"), cache=False)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_iter_images_goes_on_after_a_damaged_tiff(fake_model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    damaged = tmp_path / "damaged.tif"
    damaged.write_bytes(damaged_tiff())
    good = [photo(), photo()]
    items = list(fake_model.iter_images([good[0], str(damaged), good[1]], batch_size=2))
    assert [it.ok for it in items] == [True, False, True]
    assert items[1].embedding is None and "damaged.tif" in (items[1].error or "")
    np.testing.assert_allclose(
        np.stack([items[0].embedding, items[2].embedding]), fake_model.encode_image(good), atol=1e-6
    )


def test_iter_images_goes_on_after_an_unexpected_decoder_exception(fake_model, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    pre = fake_model.preprocessor
    real_convert = pre.convert

    def convert_or_explode(source):  # type: ignore[no-untyped-def]
        if isinstance(source, str) and source == "explodes.png":
            raise ZeroDivisionError("division by zero")
        return real_convert(source)

    monkeypatch.setattr(pre, "convert", convert_or_explode)
    items = list(fake_model.iter_images([photo(), "explodes.png", photo()], batch_size=1))
    assert [it.ok for it in items] == [True, False, True]
    assert items[1].error == (
        "explodes.png: unexpected error while reading the image (ZeroDivisionError: division by zero)"
    )
