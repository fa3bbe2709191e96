"""Each MAE stage's image transforms (the official pretraining, linear-probe and fine-tuning recipes), in one place.

Training recipes, as `Augment` values in `RECIPES`:

    pretrain  RandomResizedCrop(scale 0.2-1, bicubic) + horizontal flip + normalise
    linprobe  RandomResizedCrop(scale 0.08-1, bicubic) + horizontal flip + normalise
    finetune  RandomResizedCrop(scale 0.08-1, bicubic) + flip + RandAugment `rand-m9-mstd0.5-inc1`
              + normalise + random erasing (p 0.25, per-pixel noise), as timm builds it for MAE

Evaluation: resize the short side to size / 0.875 (bicubic), center crop, normalise.
Every field is configurable; DataModules take `augment: <recipe name> | Augment | null`.

Two forms of each: `train_transform` / `eval_transform` map PIL images to normalised floats (the
reference form); `pipeline` / `EvalPipeline` map a file path or a uint8 (C, H, W) tensor to uint8
(C, S, S), decoding only what the crop needs, and leave normalising to the batch on the device.
Recipes with RandAugment or random erasing run the PIL form inside the pipeline (they need PIL).

Images that are not 8-bit with 1 or 3 channels (`full_depth`: 16-bit, float, multi-band) take the
float form: read at their own depth (`lit_mae.datamodules.arrays`), cropped, flipped and resized as
float32 in the image's own unit, normalised in the worker (`Normalised`), random erasing after.
RandAugment (PIL's 8-bit ops) refuses them.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Callable, Literal, Union, get_args

from pathlib import Path

import torch
from PIL import Image, ImageOps
from timm.data.auto_augment import rand_augment_transform
from timm.data.random_erasing import RandomErasing
from torch import Tensor
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from lit_mae.datamodules.arrays import ArrayLayout, read_full
from lit_mae.datamodules.images import Box, load_pil, read_image

# timm's RandAugment policy strings: "rand" then numeric sections (magnitude, layers, noise, ...)
_RAND_AUGMENT = re.compile(r"rand(-(m|n|mstd|mmax|inc|p)\d+(\.\d+)?)*")

RecipeName = Literal["pretrain", "linprobe", "finetune"]
Interpolation = Literal["bicubic", "bilinear", "nearest"]
ImageTransform = Callable[[Image.Image], Tensor]


@dataclass(frozen=True)
class Augment:
    """A training transform; the defaults are the paper's linear-probe recipe."""

    crop_scale: tuple[float, float] | None = (0.08, 1.0)  # RandomResizedCrop area range; None: plain resize
    hflip: bool = True  # random horizontal flip (off for data where mirroring changes the class)
    rand_augment: str | None = None  # a timm RandAugment policy, e.g. "rand-m9-mstd0.5-inc1"
    random_erasing: float = 0.0  # probability of erasing one box with per-pixel noise (after normalise)
    interpolation: Interpolation = "bicubic"

    def __post_init__(self) -> None:
        scale = self.crop_scale
        if scale is not None and not (len(scale) == 2 and 0 < scale[0] <= scale[1] <= 1):
            raise ValueError(f"Augment.crop_scale must be (low, high) with 0 < low <= high <= 1, got {scale}")
        if not 0 <= self.random_erasing <= 1:
            raise ValueError(f"Augment.random_erasing is a probability in [0, 1], got {self.random_erasing}")
        if self.interpolation not in get_args(Interpolation):
            raise ValueError(f"Augment.interpolation must be one of {get_args(Interpolation)}, "
                             f"got {self.interpolation!r}")
        if self.rand_augment is not None and not _RAND_AUGMENT.fullmatch(self.rand_augment):
            raise ValueError("Augment.rand_augment must be a timm RandAugment policy such as "
                             f"'rand-m9-mstd0.5-inc1' (sections m, n, mstd, mmax, inc, p with numbers); "
                             f"got {self.rand_augment!r}")


RECIPES: dict[str, Augment] = {
    "pretrain": Augment(crop_scale=(0.2, 1.0)),
    "linprobe": Augment(crop_scale=(0.08, 1.0)),
    "finetune": Augment(crop_scale=(0.08, 1.0), rand_augment="rand-m9-mstd0.5-inc1", random_erasing=0.25),
}

AugmentOption = Union[RecipeName, Augment, None]


def resolve_augment(augment: AugmentOption | dict) -> Augment | None:
    """A recipe name, an `Augment`, a dict of its fields, or None (no augmentation)."""
    if augment is None or isinstance(augment, Augment):
        return augment
    if isinstance(augment, dict):
        unknown = set(augment) - {f.name for f in dataclasses.fields(Augment)}
        if unknown:
            raise ValueError(f"unknown Augment field(s) {sorted(unknown)}; "
                             f"valid: {[f.name for f in dataclasses.fields(Augment)]}")
        return Augment(**{k: tuple(v) if k == "crop_scale" and v is not None else v for k, v in augment.items()})
    if augment not in RECIPES:
        raise ValueError(f"augment must be one of {sorted(RECIPES)}, an Augment or null; got {augment!r}")
    return RECIPES[augment]


def _posterize(image: Image.Image, bits_to_keep: int, **_: object) -> Image.Image:
    """timm's posterize op, giving Pillow < 13's result for 0 bits (black) instead of Pillow 13's error.

    `rand-m9-mstd0.5` draws magnitude 10 about 2% of the time, which posterize maps to 0 bits:
    unpatched, about one image in 700 would stop the run on current Pillow.
    """
    if bits_to_keep >= 8:
        return image
    if bits_to_keep <= 0:
        return Image.new(image.mode, image.size)
    return ImageOps.posterize(image, bits_to_keep)


def rand_augment(policy: str, size: int, mean: tuple[float, ...], interpolation: Interpolation) -> Callable:
    """timm's RandAugment with the parameters timm's create_transform gives it (as MAE fine-tuning uses)."""
    fill = tuple(min(255, round(255 * m)) for m in mean)
    hparams = dict(translate_const=int(size * 0.45), img_mean=fill,
                   interpolation=getattr(Image.Resampling, interpolation.upper()))
    transform = rand_augment_transform(policy, hparams)
    for op in transform.ops:
        if op.name.startswith("Posterize"):
            op.aug_fn = _posterize
    return transform


def _mode(name: Interpolation) -> InterpolationMode:
    return InterpolationMode(name)


def train_transform(augment: Augment, size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> ImageTransform:
    """PIL image -> normalised (C, size, size) float tensor, randomly augmented by `augment`."""
    mode = _mode(augment.interpolation)
    steps: list[Callable] = [
        T.RandomResizedCrop(size, scale=augment.crop_scale, interpolation=mode) if augment.crop_scale
        else T.Resize((size, size), interpolation=mode)
    ]
    if augment.hflip:
        steps.append(T.RandomHorizontalFlip())
    if augment.rand_augment:
        steps.append(rand_augment(augment.rand_augment, size, mean, augment.interpolation))
    steps += [T.ToTensor(), T.Normalize(mean, std)]
    if augment.random_erasing > 0:
        steps.append(RandomErasing(augment.random_erasing, mode="pixel", max_count=1, device="cpu"))
    return T.Compose(steps)


def eval_transform(size: int, mean: tuple[float, ...], std: tuple[float, ...], crop_pct: float = 0.875,
                   interpolation: Interpolation = "bicubic") -> ImageTransform:
    """PIL image -> resize short side to size / crop_pct, center crop `size`, normalise."""
    if not 0 < crop_pct <= 1:
        raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}")
    return T.Compose([
        T.Resize(int(size / crop_pct), interpolation=_mode(interpolation)),
        T.CenterCrop(size),
        T.ToTensor(),
        T.Normalize(mean, std),
    ])


Source = Union[str, Path, Tensor]  # an image file, or pixels (C, H, W): uint8, or float in the image's unit
Pipeline = Callable[[Source], Tensor]


class CropAndFlip:
    """RandomResizedCrop + optional flip on uint8, drawing from torch's RNG exactly as torchvision's
    `RandomResizedCrop` and `RandomHorizontalFlip` do (same seed, same crop and flip). With
    `full_depth`, files are read at their own depth and the output is float32 in their unit."""

    def __init__(self, augment: Augment, size: int, channels: int = 3, full_depth: bool = False,
                 layout: ArrayLayout = "auto") -> None:
        self.augment, self.size, self.channels = augment, (size, size), channels
        self.mode = _mode(augment.interpolation)
        self.full_depth, self.layout = full_depth, layout

    def plan(self, height: int, width: int) -> Box:
        if self.augment.crop_scale is None:
            return 0, 0, height, width
        shape_only = torch.empty(1, 1, 1).expand(1, height, width)  # get_params reads the size
        return T.RandomResizedCrop.get_params(shape_only, list(self.augment.crop_scale), [3 / 4, 4 / 3])

    def __call__(self, source: Source) -> Tensor:
        if isinstance(source, Tensor):
            source = as_unit(source) if self.full_depth else source
            pixels = TF.resized_crop(source, *self.plan(*source.shape[-2:]), list(self.size),
                                     interpolation=self.mode, antialias=True)
        elif self.full_depth:
            pixels = read_full(source, self.channels, self.plan, self.size, self.mode, self.layout)
        else:
            pixels = read_image(source, self.channels, self.plan, self.size, self.mode)
        if self.augment.hflip and torch.rand(1) < 0.5:
            pixels = pixels.flip(-1)
        return pixels  # uint8 (C, S, S); float32 with full_depth


class PILPipeline:
    """A PIL-image transform (e.g. `train_transform` with RandAugment) applied to a file or uint8 tensor."""

    def __init__(self, transform: ImageTransform, channels: int = 3) -> None:
        self.transform, self.channels = transform, channels

    def __call__(self, source: Source) -> Tensor:
        if isinstance(source, Tensor):
            image = TF.to_pil_image(source)
        else:
            image = load_pil(source, self.channels)
        return self.transform(image)


class EvalPipeline:
    """Evaluation on uint8: short side to size / crop_pct (bicubic, antialiased), center crop."""

    def __init__(self, size: int, channels: int = 3, crop_pct: float = 0.875,
                 interpolation: Interpolation = "bicubic", full_depth: bool = False,
                 layout: ArrayLayout = "auto") -> None:
        if not 0 < crop_pct <= 1:
            raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}")
        self.size, self.channels, self.resize = size, channels, int(size / crop_pct)
        self.mode = _mode(interpolation)
        self.full_depth, self.layout = full_depth, layout

    def __call__(self, source: Source) -> Tensor:
        if isinstance(source, Tensor):
            pixels = as_unit(source) if self.full_depth else source
        else:
            pixels = read_full(source, self.channels, layout=self.layout) if self.full_depth else \
                read_image(source, self.channels)
        pixels = TF.resize(pixels, self.resize, interpolation=self.mode, antialias=True)
        return TF.center_crop(pixels, [self.size, self.size])  # uint8 (C, S, S); float32 with full_depth


def as_unit(pixels: Tensor) -> Tensor:
    """A uint8 tensor as float32 fractions of 255 (the file reader's unit); float passes through."""
    return pixels.float().div_(255) if pixels.dtype == torch.uint8 else pixels


class Normalised:
    """The float form's last steps, in the worker: (pixels - mean) / std per channel, then random
    erasing (per-pixel noise, timm's) with probability `erasing`. float32 (C, S, S) out."""

    def __init__(self, load: Pipeline, mean: tuple[float, ...], std: tuple[float, ...], erasing: float = 0.0) -> None:
        self.load = load
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)  # (C, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.erase = RandomErasing(erasing, mode="pixel", max_count=1, device="cpu") if erasing > 0 else None

    def __call__(self, source: Source) -> Tensor:
        pixels = (self.load(source) - self.mean) / self.std
        return self.erase(pixels) if self.erase is not None else pixels


def pipeline(augment: Augment | None, size: int, channels: int, mean: tuple[float, ...],
             std: tuple[float, ...], crop_pct: float = 0.875, full_depth: bool = False,
             layout: ArrayLayout = "auto") -> Pipeline:
    """The training pipeline of `augment` (the evaluation one for None): uint8 out where it can be;
    with `full_depth` (forced for channels other than 1 and 3) the float form, normalised."""
    if full_depth or channels not in (1, 3):
        check_tensor_only(augment, channels)
        load: Pipeline = EvalPipeline(size, channels, crop_pct, full_depth=True, layout=layout) if augment is None \
            else CropAndFlip(augment, size, channels, full_depth=True, layout=layout)
        return Normalised(load, mean, std, augment.random_erasing if augment is not None else 0.0)
    if augment is None:
        return EvalPipeline(size, channels, crop_pct)
    if augment.rand_augment or augment.random_erasing > 0:
        return PILPipeline(train_transform(augment, size, mean, std), channels)
    return CropAndFlip(augment, size, channels)


def check_tensor_only(augment: Augment | None, channels: int) -> None:
    """RandAugment is PIL's 8-bit 1- or 3-channel ops: a ValueError saying so for other images."""
    if augment is not None and augment.rand_augment:
        raise ValueError(f"Augment.rand_augment={augment.rand_augment!r}: RandAugment works on 8-bit images with 1 "
                         f"or 3 channels (its ops are PIL's), not on these ({channels} channels or more than 8 bits); "
                         "set rand_augment: null (crop, flip, resize and random erasing work on any channels and depth)")
