"""Reading image files (datamodules/images.py) and the uint8 pipelines built on it (transforms.py):
every mode as upright RGB or L, corrupt files named, crops decoded as torchvision would crop them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps, JpegImagePlugin
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as TF

from conftest import UNREADABLE_KINDS, write_unreadable
from lit_mae.datamodules.images import UnreadableImageError, load_pil, read_image
from lit_mae.datamodules.transforms import (
    RECIPES, Augment, CropAndFlip, EvalPipeline, PILPipeline, eval_transform, pipeline,
)

BICUBIC = InterpolationMode.BICUBIC
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
H, W = 30, 40  # the upright test image: landscape, so a missed rotation changes the shape
_EXIF_ORIENTATION = 0x0112


def chw(array: np.ndarray) -> torch.Tensor:
    """uint8 (C, H, W) from a (H, W) or (H, W, C) array."""
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.uint8))
    return tensor.unsqueeze(0) if tensor.ndim == 2 else tensor.permute(2, 0, 1)


def rgb_noise(height: int = H, width: int = W, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def scene(height: int = H, width: int = W) -> np.ndarray:
    """(H, W, 3) smooth enough for JPEG, asymmetric under every flip and rotation:
    red grows left to right, green top to bottom, blue only in the top-left quadrant."""
    y, x = np.mgrid[0:height, 0:width]
    blue = np.where((y < height // 2) & (x < width // 2), 255, 20)
    return np.stack([x * 255 // (width - 1), y * 255 // (height - 1), blue], -1).astype(np.uint8)


def gray_of(rgb: np.ndarray) -> np.ndarray:
    return np.array(Image.fromarray(rgb).convert("L"))  # Pillow's ITU-R 601 luma, as convert("L") gives


def save(path: Path, image: Image.Image, **options) -> Path:
    image.save(path, **options)
    return path


# --- modes -----------------------------------------------------------------------------------------

def _mode_cases(tmp: Path) -> dict[str, tuple[Path, np.ndarray]]:
    """mode name -> (file, the (H, W, 3) RGB a reader should see), references built by hand."""
    rgb = rgb_noise()
    gray = rgb[..., 0]
    palette_image = Image.fromarray(rgb).quantize(16)
    indices = np.array(palette_image)  # (H, W) palette indices
    palette = np.array(palette_image.getpalette()[:3 * 256], dtype=np.uint8).reshape(-1, 3)
    alpha = np.random.default_rng(1).integers(0, 256, (H, W), dtype=np.uint8)
    bits = rgb[..., 1] > 127
    black_white = np.where(bits, 255, 0).astype(np.uint8)
    return {
        "L": (save(tmp / "l.png", Image.fromarray(gray)), np.repeat(gray[..., None], 3, -1)),
        "P": (save(tmp / "p.png", palette_image), palette[indices]),
        # transparency is dropped (as torchvision's and timm's loaders do): the palette colour stays
        "P+transparency": (save(tmp / "pt.png", palette_image, transparency=int(indices[0, 0])), palette[indices]),
        "P+transparency gif": (save(tmp / "pt.gif", palette_image, transparency=int(indices[0, 0])),
                               palette[indices]),
        "RGBA": (save(tmp / "rgba.png", Image.fromarray(np.dstack([rgb, alpha]))), rgb),
        "LA": (save(tmp / "la.png", Image.fromarray(np.dstack([gray, alpha]), mode="LA")),
               np.repeat(gray[..., None], 3, -1)),
        "1": (save(tmp / "bits.png", Image.fromarray(bits)), np.repeat(black_white[..., None], 3, -1)),
    }


@pytest.mark.parametrize("mode", ["L", "P", "P+transparency", "P+transparency gif", "RGBA", "LA", "1"])
def test_every_mode_reads_as_rgb_and_as_l(tmp_path: Path, mode: str):
    path, want = _mode_cases(tmp_path)[mode]
    with Image.open(path) as stored:
        assert stored.mode == mode.split("+")[0]  # the file really holds that mode
        assert ("transparency" in stored.info) == ("transparency" in mode)
    rgb = read_image(path)
    assert rgb.dtype == torch.uint8 and rgb.shape == (3, H, W)
    assert torch.equal(rgb, chw(want))
    gray = read_image(path, channels=1)
    assert gray.dtype == torch.uint8 and gray.shape == (1, H, W)
    assert torch.equal(gray, chw(gray_of(want)))
    assert np.array_equal(np.array(load_pil(path)), want)  # the PIL form agrees


@pytest.mark.parametrize("channels", [3, 1])
def test_16_bit_gray_keeps_its_top_8_bits_instead_of_clipping(tmp_path: Path, channels: int):
    values = np.array([0x0000, 0x00FF, 0x0100, 0x1234, 0x8000, 0xFF00, 0xFFFF], dtype=np.uint16)
    pixels = np.resize(values, (H, W)).astype(np.uint16)
    path = save(tmp_path / "g16.png", Image.fromarray(pixels))
    with Image.open(path) as stored:
        assert stored.mode == "I;16"  # Pillow's own convert("L") would clip every value above 255 to white
    got = read_image(path, channels=channels)
    assert got.shape == (channels, H, W)
    want = (pixels >> 8).astype(np.uint8)  # 0x8000 -> 128, 0x1234 -> 0x12, 0x00FF -> 0
    for channel in got:
        assert torch.equal(channel, torch.from_numpy(want))
    assert got[0, 0, 4].item() == 128


def test_cmyk_jpeg_reads_as_its_rgb(tmp_path: Path):
    rgb = scene()
    path = save(tmp_path / "cmyk.jpg", Image.fromarray(rgb).convert("CMYK"), quality=95)
    with Image.open(path) as stored:
        assert stored.mode == "CMYK"
        pillow = np.array(stored.convert("RGB"))
    got = read_image(path)
    assert torch.equal(got, chw(pillow))
    assert (got.float() - chw(rgb).float()).abs().mean() < 4  # lossy, but the same picture


# --- EXIF orientation ------------------------------------------------------------------------------

STORED_AS = {1: 0, 3: 2, 6: 1, 8: -1}  # orientation -> np.rot90 turns (counter-clockwise) of the stored pixels


def save_rotated(path: Path, upright: np.ndarray, orientation: int, **options) -> Path:
    """A file whose pixels are `upright` turned, with the EXIF tag that says how to turn them back."""
    exif = Image.Exif()
    exif[_EXIF_ORIENTATION] = orientation
    stored = np.rot90(upright, STORED_AS[orientation])
    return save(path, Image.fromarray(np.ascontiguousarray(stored)), exif=exif, **options)


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_exif_orientation_png_reads_upright_exactly(tmp_path: Path, orientation: int):
    upright = scene()
    path = save_rotated(tmp_path / f"o{orientation}.png", upright, orientation)
    with Image.open(path) as stored:
        assert stored.getexif()[_EXIF_ORIENTATION] == orientation
    assert torch.equal(read_image(path), chw(upright))
    assert torch.equal(read_image(path, channels=1), chw(gray_of(upright)))
    assert np.array_equal(np.array(load_pil(path)), upright)


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_jpeg_reads_upright(tmp_path: Path, orientation: int):
    upright = scene()
    path = save_rotated(tmp_path / f"o{orientation}.jpg", upright, orientation, quality=95)
    got = read_image(path)
    assert got.shape == (3, H, W)
    assert (got.float() - chw(upright).float()).abs().mean() < 4  # measured about 1.7
    assert got[2, :H // 2, :W // 2].float().mean() > 200 and got[2, H // 2:, W // 2:].float().mean() < 60


def test_crop_plan_sees_the_upright_image(tmp_path: Path):
    upright = scene()
    path = save_rotated(tmp_path / "o6.png", upright, 6)
    seen = []

    def plan(height: int, width: int) -> tuple[int, int, int, int]:
        seen.append((height, width))
        return 2, 5, 20, 24  # top, left, height, width

    got = read_image(path, plan=plan, size=(12, 16))
    assert seen == [(H, W)]
    want = TF.resized_crop(chw(upright), 2, 5, 20, 24, [12, 16], interpolation=BICUBIC, antialias=True)
    assert torch.equal(got, want)


# --- unreadable files ------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", UNREADABLE_KINDS)
@pytest.mark.parametrize("reader", ["read_image", "read_image with a crop", "load_pil", "eval", "finetune"])
def test_unreadable_files_raise_an_error_naming_them(tmp_path: Path, kind: str, reader: str):
    path = write_unreadable(tmp_path / f"{kind}.jpg", kind)
    read = {
        "read_image": read_image,
        "read_image with a crop": lambda p: read_image(p, plan=lambda h, w: (0, 0, h, w), size=(16, 16)),
        "load_pil": load_pil,
        "eval": EvalPipeline(16),
        "finetune": pipeline(RECIPES["finetune"], 16, 3, IMAGENET_MEAN, IMAGENET_STD),
    }[reader]
    with pytest.raises(UnreadableImageError, match=str(path)) as caught:
        read(path)
    assert caught.value.path == str(path)
    assert isinstance(caught.value, OSError)


# --- crops: the same crop and flip as torchvision ---------------------------------------------------

def torchvision_crop_and_flip(image: Image.Image, seed: int, size: int, scale: tuple[float, float]
                              ) -> tuple[torch.Tensor, torch.Tensor]:
    """RandomResizedCrop + RandomHorizontalFlip's draws under `seed`, applied with torchvision v2 to
    the fully decoded uint8 pixels; and the next number torch's RNG gives after them."""
    torch.manual_seed(seed)
    box = T.RandomResizedCrop.get_params(image, list(scale), [3 / 4, 4 / 3])
    flip = bool(torch.rand(1) < 0.5)
    pixels = TF.resized_crop(chw(np.array(image)), *box, [size, size], interpolation=BICUBIC, antialias=True)
    return (pixels.flip(-1) if flip else pixels), torch.rand(1)


@pytest.fixture
def draft_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """(requested size, decoded size) of every JPEG draft call."""
    calls = []
    draft = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        result = draft(self, mode, size)
        calls.append((tuple(size), self.size))
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    return calls


@pytest.mark.parametrize("suffix", ["png", "jpg"])
def test_crop_and_flip_is_torchvisions_crop_exactly_without_draft(tmp_path: Path, suffix: str, draft_calls):
    path = save(tmp_path / f"noise.{suffix}", Image.fromarray(rgb_noise()))
    with Image.open(path) as stored:
        image = stored.convert("RGB")
    crop = CropAndFlip(Augment(crop_scale=(0.2, 1.0)), 16)
    flips = set()
    for seed in range(8):
        want, next_draw = torchvision_crop_and_flip(image, seed, 16, (0.2, 1.0))
        torch.manual_seed(seed)
        got = crop(path)
        assert got.dtype == torch.uint8 and got.shape == (3, 16, 16)
        assert torch.equal(got, want), seed
        assert torch.equal(torch.rand(1), next_draw)  # the RNG is left where torchvision leaves it
        flips.add(torch.equal(got, TF.resized_crop(chw(np.array(image)), *_box(image, seed), [16, 16],
                                                   interpolation=BICUBIC, antialias=True)))
    assert flips == {True, False}  # both flipped and unflipped draws were compared
    assert draft_calls == []  # a 40x30 file is never decoded below full size for 16x16


def _box(image: Image.Image, seed: int) -> tuple[int, int, int, int]:
    torch.manual_seed(seed)
    return T.RandomResizedCrop.get_params(image, [0.2, 1.0], [3 / 4, 4 / 3])


def test_crop_and_flip_draws_like_torchvisions_pil_transforms(tmp_path: Path):
    """The v1 PIL pipeline consumes the same draws, and resamples to nearly the same pixels."""
    path = save(tmp_path / "scene.png", Image.fromarray(scene(120, 160)))
    with Image.open(path) as stored:
        image = stored.convert("RGB")
    reference = T.Compose([T.RandomResizedCrop(32, scale=(0.2, 1.0), interpolation=BICUBIC),
                           T.RandomHorizontalFlip()])
    crop = CropAndFlip(Augment(crop_scale=(0.2, 1.0)), 32)
    for seed in range(6):
        torch.manual_seed(seed)
        want, next_draw = chw(np.array(reference(image))), torch.rand(1)
        torch.manual_seed(seed)
        got = crop(path)
        assert torch.equal(torch.rand(1), next_draw)
        assert (got.float() - want.float()).abs().mean() < 1.0, seed  # PIL vs torch bicubic rounding


def test_large_jpeg_is_draft_decoded_close_to_the_full_decode(tmp_path: Path, draft_calls):
    path = save(tmp_path / "big.jpg", Image.fromarray(scene(1200, 1600)), quality=90)
    with Image.open(path) as stored:
        image = stored.convert("RGB")  # the full 1600x1200 decode, the reference's input
    crop = CropAndFlip(Augment(crop_scale=(0.2, 1.0)), 64)
    differences = []
    for seed in range(4):
        want, next_draw = torchvision_crop_and_flip(image, seed, 64, (0.2, 1.0))
        torch.manual_seed(seed)
        got = crop(path)
        assert got.shape == (3, 64, 64)
        assert torch.equal(torch.rand(1), next_draw)
        differences.append((got.float() - want.float()).abs().mean().item())
    assert max(differences) < 4, differences  # measured at most 1.9 levels of 255
    assert len(draft_calls) == 4
    for requested, decoded in draft_calls:
        assert decoded[0] <= 800 and decoded[1] <= 600  # decoded at 1/2 scale or less


@pytest.mark.parametrize("width, height, size, scale", [
    (1600, 1200, 64, 8),
    (1601, 1201, 64, 8),  # the scale does not divide the size
    (500, 375, 112, 2),  # an ImageNet-sized photo
])
def test_draft_decodes_at_the_largest_scale_the_crop_allows(tmp_path: Path, draft_calls, width: int, height: int,
                                                             size: int, scale: int):
    path = save(tmp_path / "big.jpg", Image.fromarray(scene(height, width)), quality=90)
    whole = CropAndFlip(Augment(crop_scale=None, hflip=False), size)  # the whole image resized to size
    assert whole(path).shape == (3, size, size)
    assert [decoded for _, decoded in draft_calls] == [(-(-width // scale), -(-height // scale))]


def test_exif_rotated_large_jpeg_is_cropped_upright_at_full_size(tmp_path: Path, draft_calls):
    path = save_rotated(tmp_path / "big6.jpg", scene(300, 400), 6, quality=90)
    with Image.open(path) as stored:
        image = ImageOps.exif_transpose(stored).convert("RGB")
    assert image.size == (400, 300)
    crop = CropAndFlip(Augment(crop_scale=(0.5, 1.0)), 32)
    for seed in range(3):
        want, _ = torchvision_crop_and_flip(image, seed, 32, (0.5, 1.0))
        torch.manual_seed(seed)
        assert torch.equal(crop(path), want)
    assert draft_calls == []  # the draft path only serves upright files


def test_crop_and_flip_on_a_tensor_matches_the_file(tmp_path: Path):
    pixels = rgb_noise()
    path = save(tmp_path / "noise.png", Image.fromarray(pixels))
    crop = CropAndFlip(Augment(crop_scale=(0.2, 1.0)), 16)
    for seed in range(4):
        torch.manual_seed(seed)
        from_file = crop(path)
        torch.manual_seed(seed)
        assert torch.equal(crop(chw(pixels)), from_file)


# --- evaluation and the recipe pipelines ----------------------------------------------------------

@pytest.mark.parametrize("size", [16, 24])
def test_eval_pipeline_is_torchvisions_resize_and_center_crop_on_uint8(tmp_path: Path, size: int):
    pixels = rgb_noise()
    path = save(tmp_path / "noise.png", Image.fromarray(pixels))
    reference = v2.Compose([v2.Resize(int(size / 0.875), interpolation=BICUBIC, antialias=True),
                            v2.CenterCrop(size)])
    want = reference(chw(pixels))
    assert torch.equal(EvalPipeline(size)(path), want)
    assert torch.equal(EvalPipeline(size)(chw(pixels)), want)
    # and within a level of the PIL-based reference form (eval_transform), un-normalised
    floats = eval_transform(size, IMAGENET_MEAN, IMAGENET_STD)(Image.fromarray(pixels))
    levels = (floats * torch.tensor(IMAGENET_STD).view(3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) * 255
    assert (levels - want.float()).abs().max() <= 1.5


@pytest.mark.parametrize("recipe", [None, "pretrain", "linprobe", "finetune"])
@pytest.mark.parametrize("channels", [3, 1])
def test_each_recipe_pipeline_gives_the_configured_size_and_dtype(tmp_path: Path, recipe: str | None,
                                                                  channels: int):
    path = save(tmp_path / "scene.jpg", Image.fromarray(scene()))
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if channels == 3 else ((0.45,), (0.225,))
    load = pipeline(RECIPES[recipe] if recipe else None, 24, channels, mean, std)
    want_type = {None: EvalPipeline, "finetune": PILPipeline}.get(recipe, CropAndFlip)
    assert type(load) is want_type
    torch.manual_seed(0)
    for source in (path, read_image(path, channels)):
        out = load(source)
        assert out.shape == (channels, 24, 24)
        assert out.dtype == (torch.float32 if recipe == "finetune" else torch.uint8)
