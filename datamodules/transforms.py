"""Each MAE stage's image transforms (../shared/MAE_REFERENCE.md section 3), in one place.

Training recipes, as `Augment` values in `RECIPES`:

    pretrain  RandomResizedCrop(scale 0.2-1, bicubic) + horizontal flip + normalise
    linprobe  RandomResizedCrop(scale 0.08-1, bicubic) + horizontal flip + normalise
    finetune  RandomResizedCrop(scale 0.08-1, bicubic) + flip + RandAugment `rand-m9-mstd0.5-inc1`
              + normalise + random erasing (p 0.25, per-pixel noise), as timm builds it for MAE

Evaluation: resize the short side to size / 0.875 (bicubic), center crop, normalise.
Every field is configurable; DataModules take `augment: <recipe name> | Augment | null`.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Callable, Literal, Union, get_args

from PIL import Image, ImageOps
from timm.data.auto_augment import rand_augment_transform
from timm.data.random_erasing import RandomErasing
from torch import Tensor
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

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
