"""The stage transforms: parity with the official MAE eval pipeline and timm's fine-tune pipeline,
the paper's recipes, the posterize fix, `resolve_augment`, and DigitsDataModule's `augment`."""

from __future__ import annotations

import copy
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from jsonargparse import ArgumentParser
from lightning.pytorch.callbacks import ModelCheckpoint
from PIL import Image, ImageOps
from timm.data import create_transform
from timm.data.auto_augment import RandAugment
from timm.data.random_erasing import RandomErasing
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

from conftest import tiny_config_values
from lit_mae import LitLinearProbe
from lit_mae.datamodules import DigitsDataModule
from lit_mae.datamodules.transforms import (
    RECIPES, Augment, eval_transform, rand_augment, resolve_augment, train_transform,
)

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
GRAY_MEAN, GRAY_STD = (0.3,), (0.25,)
POLICY = "rand-m9-mstd0.5-inc1"  # the paper's fine-tuning RandAugment


def random_image(height: int, width: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    shape = (height, width, 3) if mode == "RGB" else (height, width)
    pixels = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    return Image.fromarray(pixels).convert(mode)


def steps_of(transform: T.Compose, kind: type) -> list:
    return [step for step in transform.transforms if isinstance(step, kind)]


def timm_finetune(size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> T.Compose:
    """What the official MAE fine-tuning script builds (main_finetune.py: build_transform)."""
    return create_transform(size, is_training=True, color_jitter=None, auto_augment=POLICY,
                            interpolation="bicubic", re_prob=0.25, re_mode="pixel", re_count=1,
                            mean=mean, std=std)


# --- evaluation -------------------------------------------------------------------------------

def test_eval_transform_is_the_official_mae_eval_pipeline_bitwise():
    official = T.Compose([  # main_linprobe.py / util/datasets.py, written out with torchvision
        T.Resize(int(224 / 0.875), interpolation=InterpolationMode.BICUBIC),
        T.CenterCrop(224),
        T.ToTensor(),
        T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])
    image = random_image(375, 500)  # PIL size (500, 375): landscape, not square
    got = eval_transform(224, IMAGENET_MEAN, IMAGENET_STD)(image)
    want = official(image)
    assert got.shape == want.shape == (3, 224, 224)
    assert torch.equal(got, want)


@pytest.mark.parametrize("crop_pct", [0.0, -0.5, 1.5])
def test_eval_transform_rejects_a_crop_fraction_outside_0_1(crop_pct):
    with pytest.raises(ValueError, match=f"crop_pct.*{crop_pct}"):
        eval_transform(224, IMAGENET_MEAN, IMAGENET_STD, crop_pct=crop_pct)


# --- the paper's recipes (the official code's transforms) -------------------------------------------

@pytest.mark.parametrize("recipe, scale, rand_augment_policy, erasing", [
    ("pretrain", (0.2, 1.0), None, None),
    ("linprobe", (0.08, 1.0), None, None),
    ("finetune", (0.08, 1.0), POLICY, 0.25),
])
def test_recipes_build_the_papers_transforms(recipe, scale, rand_augment_policy, erasing):
    transform = train_transform(RECIPES[recipe], 224, IMAGENET_MEAN, IMAGENET_STD)
    (crop,) = steps_of(transform, T.RandomResizedCrop)
    assert crop.size == (224, 224)
    assert tuple(crop.scale) == scale
    assert crop.interpolation == InterpolationMode.BICUBIC
    (flip,) = steps_of(transform, T.RandomHorizontalFlip)
    assert flip.p == 0.5
    (normalize,) = steps_of(transform, T.Normalize)
    assert tuple(normalize.mean) == IMAGENET_MEAN and tuple(normalize.std) == IMAGENET_STD
    assert len(steps_of(transform, RandAugment)) == (rand_augment_policy is not None)
    erasers = steps_of(transform, RandomErasing)
    assert [e.probability for e in erasers] == ([] if erasing is None else [erasing])
    assert RECIPES[recipe].rand_augment == rand_augment_policy


@pytest.mark.parametrize("size, mean, std", [(224, IMAGENET_MEAN, IMAGENET_STD), (16, (0.3,) * 3, (0.25,) * 3)])
def test_finetune_recipe_matches_timms_create_transform(size, mean, std):
    ours = train_transform(RECIPES["finetune"], size, mean, std)
    theirs = timm_finetune(size, mean, std)

    def kinds(transform: T.Compose) -> list[str]:  # timm's step class names, by what they do
        alias = {"RandomResizedCropAndInterpolation": "RandomResizedCrop", "MaybeToTensor": "ToTensor"}
        return [alias.get(type(s).__name__, type(s).__name__) for s in transform.transforms]

    assert kinds(ours) == kinds(theirs)  # same steps in the same order
    crop, their_crop = ours.transforms[0], theirs.transforms[0]
    assert (tuple(crop.scale), tuple(crop.ratio)) == (tuple(their_crop.scale), tuple(their_crop.ratio))
    assert crop.interpolation == their_crop.interpolation == InterpolationMode.BICUBIC
    assert ours.transforms[1].p == theirs.transforms[1].p

    (ra,), (their_ra,) = steps_of(ours, RandAugment), steps_of(theirs, RandAugment)
    assert (ra.num_layers, ra.choice_weights) == (their_ra.num_layers, their_ra.choice_weights)
    assert [op.name for op in ra.ops] == [op.name for op in their_ra.ops]
    for op, their_op in zip(ra.ops, their_ra.ops):
        assert (op.prob, op.magnitude, op.magnitude_std, op.magnitude_max) == \
               (their_op.prob, their_op.magnitude, their_op.magnitude_std, their_op.magnitude_max), op.name
        assert op.kwargs == their_op.kwargs, op.name  # fillcolor, resample
        assert op.hparams == their_op.hparams, op.name  # translate_const, img_mean, interpolation, ...
        assert op.level_fn is their_op.level_fn, op.name
        if not op.name.startswith("Posterize"):
            assert op.aug_fn is their_op.aug_fn, op.name

    (normalize,), (their_normalize,) = steps_of(ours, T.Normalize), steps_of(theirs, T.Normalize)
    assert torch.allclose(torch.as_tensor(normalize.mean), torch.as_tensor(their_normalize.mean))
    assert torch.allclose(torch.as_tensor(normalize.std), torch.as_tensor(their_normalize.std))
    (erase,), (their_erase,) = steps_of(ours, RandomErasing), steps_of(theirs, RandomErasing)
    assert vars(erase) == vars(their_erase)  # probability, mode, count, area and aspect ranges


def test_rand_augment_draws_the_same_images_as_timms_with_the_same_seeds():
    size = 32
    ours = rand_augment(POLICY, size, IMAGENET_MEAN, "bicubic")
    (theirs,) = steps_of(timm_finetune(size, IMAGENET_MEAN, IMAGENET_STD), RandAugment)
    image = random_image(size, size, seed=1)
    compared = 0
    for seed in range(60):
        random.seed(seed), np.random.seed(seed)
        got = ours(image)
        random.seed(seed), np.random.seed(seed)
        try:
            want = theirs(image)
        except ValueError:  # unpatched timm posterize at 0 bits on Pillow >= 13
            continue
        assert np.array_equal(np.asarray(got), np.asarray(want)), seed
        compared += 1
    assert compared >= 50


# --- shapes ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("recipe", sorted(RECIPES))
@pytest.mark.parametrize("mode, mean, std", [("RGB", IMAGENET_MEAN, IMAGENET_STD), ("L", GRAY_MEAN, GRAY_STD)])
def test_each_recipe_gives_a_normalised_square_tensor(recipe, mode, mean, std):
    torch.manual_seed(0), random.seed(0), np.random.seed(0)
    transform = train_transform(RECIPES[recipe], 16, mean, std)
    for seed in range(5):
        out = transform(random_image(37, 23, mode, seed))  # PIL size (23, 37): not square
        assert out.shape == (len(mean), 16, 16)
        assert out.dtype == torch.float32
        assert torch.isfinite(out).all()


@pytest.mark.parametrize("mode, mean", [("RGB", IMAGENET_MEAN), ("L", GRAY_MEAN)])
def test_every_rand_augment_op_works_at_every_magnitude(mode, mean):
    image = random_image(20, 13, mode)
    for op in rand_augment(POLICY, 16, mean, "bicubic").ops:
        op = copy.copy(op)
        op.prob, op.magnitude_std = 1.0, 0.0
        for magnitude in range(11):
            op.magnitude = magnitude
            out = op(image)
            assert (out.mode, out.size) == (image.mode, image.size), (op.name, magnitude)


# --- the posterize fix ------------------------------------------------------------------------------

def posterize_by_definition(image: Image.Image, bits: int) -> Image.Image:
    """Keep the `bits` most significant bits of each channel (what Pillow < 13 did, 0 bits included)."""
    mask = ~(2 ** (8 - bits) - 1) & 0xFF
    return image.point([i & mask for i in range(256)] * len(image.getbands()))


def posterize_op(mean: tuple[float, ...] = IMAGENET_MEAN):
    ops = [op for op in rand_augment(POLICY, 16, mean, "bicubic").ops if op.name.startswith("Posterize")]
    assert len(ops) == 1
    return copy.copy(ops[0])


def test_posterize_at_magnitude_10_gives_pillow_12s_black_image():
    op = posterize_op()
    op.prob, op.magnitude, op.magnitude_std = 1.0, 10, 0.0
    image = random_image(16, 16)
    out = op(image)  # magnitude 10 -> 0 bits kept; Pillow 13's ImageOps.posterize raises there
    assert out.mode == image.mode and out.size == image.size
    assert np.array_equal(np.asarray(out), np.asarray(posterize_by_definition(image, 0)))
    assert not np.asarray(out).any()


@pytest.mark.parametrize("bits", range(1, 8))
def test_posterize_keeps_pillows_result_for_1_to_7_bits(bits):
    op = posterize_op()
    image = random_image(16, 16, seed=bits)
    out = op.aug_fn(image, bits, **op.kwargs)
    assert np.array_equal(np.asarray(out), np.asarray(ImageOps.posterize(image, bits)))
    assert np.array_equal(np.asarray(out), np.asarray(posterize_by_definition(image, bits)))


def test_posterize_keeps_8_bits_as_is():
    op = posterize_op()
    image = random_image(16, 16)
    assert np.array_equal(np.asarray(op.aug_fn(image, 8, **op.kwargs)), np.asarray(image))


# --- resolve_augment ------------------------------------------------------------------------------

def test_resolve_augment_none_names_augments_and_dicts():
    assert resolve_augment(None) is None
    for name, recipe in RECIPES.items():
        assert resolve_augment(name) == recipe
    custom = Augment(crop_scale=(0.5, 1.0), hflip=False)
    assert resolve_augment(custom) is custom
    from_yaml = resolve_augment({"crop_scale": [0.3, 0.9], "hflip": False, "random_erasing": 0.1})
    assert from_yaml == Augment(crop_scale=(0.3, 0.9), hflip=False, random_erasing=0.1)
    assert isinstance(from_yaml.crop_scale, tuple)
    assert resolve_augment({"crop_scale": None}).crop_scale is None
    hash(from_yaml)  # frozen and hashable: the tuple, not the list, is stored


@pytest.mark.parametrize("bad, named", [
    pytest.param("finetuning", "'finetuning'", id="unknown-recipe"),
    pytest.param({"crop_scale": [0.2, 1.0], "flip": True}, "flip", id="unknown-field"),
    pytest.param({"crop_scale": [0.0, 1.0]}, r"\(0.0, 1.0\)", id="crop-scale-zero"),
    pytest.param({"crop_scale": [0.9, 0.2]}, r"\(0.9, 0.2\)", id="crop-scale-reversed"),
    pytest.param({"crop_scale": [0.2, 1.5]}, r"\(0.2, 1.5\)", id="crop-scale-above-1"),
    pytest.param({"crop_scale": [0.5]}, r"crop_scale.*0\.5", id="crop-scale-one-number"),
    pytest.param({"random_erasing": 1.25}, "1.25", id="erasing-above-1"),
    pytest.param({"random_erasing": -0.1}, "-0.1", id="erasing-negative"),
    pytest.param({"interpolation": "bogus"}, "interpolation.*bogus", id="interpolation"),
    pytest.param({"rand_augment": "augmix-m5"}, "augmix-m5", id="policy-not-rand"),
    # start like a policy but timm cannot read them: an unknown section (timm asserts when the
    # DataModule is set up) and a magnitude that is not a number (timm silently skips it)
    pytest.param({"rand_augment": "rand-x9"}, "rand-x9", id="policy-unknown-section"),
    pytest.param({"rand_augment": "rand-mX"}, "rand-mX", id="policy-bad-magnitude"),
])
def test_resolve_augment_rejects_bad_values_naming_them(bad, named):
    with pytest.raises(ValueError, match=named):
        resolve_augment(bad)


# --- DigitsDataModule(augment=...) --------------------------------------------------------------

AUGMENTS = [pytest.param("finetune", id="finetune"), pytest.param(Augment(hflip=False), id="no-flip")]


def digits(**kwargs) -> DigitsDataModule:
    dm = DigitsDataModule(image_size=16, batch_size=8, **kwargs)
    dm.setup("fit")
    return dm


@pytest.mark.parametrize("augment", AUGMENTS)
def test_augmented_digits_batches_and_randomness(augment):
    torch.manual_seed(0), random.seed(0), np.random.seed(0)
    dm = digits(augment=augment)
    images, labels = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)
    assert images.shape == (8, 3, 16, 16) and images.dtype == torch.float32
    assert labels.shape == (8,)
    train = dm.splits["train"]
    first_epoch = torch.stack([train[i][0] for i in range(8)])
    second_epoch = torch.stack([train[i][0] for i in range(8)])
    assert not torch.equal(first_epoch, second_epoch)  # a fresh random draw each time


@pytest.mark.parametrize("augment", AUGMENTS)
def test_augmenting_leaves_val_and_test_and_labels_as_they_were(augment):
    plain, augmented = digits(), digits(augment=augment)
    for split in ("val", "test"):
        for index in range(0, len(plain.splits[split]), 17):
            got, want = augmented.splits[split][index], plain.splits[split][index]
            assert torch.equal(got[0], want[0]) and got[1] == want[1], split
    assert torch.equal(augmented.splits["train"].labels, plain.splits["train"].labels)
    assert (augmented.mean, augmented.std) == (plain.mean, plain.std)


@pytest.mark.parametrize("augment", [None, *AUGMENTS])
def test_hparams_hold_augment_as_plain_data(augment):
    dm = DigitsDataModule(image_size=16, augment=augment)
    saved = dm.hparams["augment"]
    assert saved is None if augment is None else type(saved) is dict
    assert resolve_augment(saved) == dm.augment  # and it round-trips


def test_logged_hparams_record_augment():
    dm = DigitsDataModule(image_size=16, augment="finetune")
    # loggers write `hparams_initial` (hparams.yaml, TensorBoard's hparams tab)
    assert dm.hparams_initial.get("augment") == dm.hparams["augment"]


@pytest.mark.filterwarnings("ignore:.*module\\(s\\) in eval mode.*")  # the probe's frozen encoder
def test_checkpoint_of_an_augmented_run_loads_with_weights_only(tmp_path: Path, make_trainer):
    augment = Augment(crop_scale=(0.5, 1.0), hflip=False, rand_augment=POLICY)
    dm = DigitsDataModule(image_size=16, batch_size=16, augment=augment)
    probe = LitLinearProbe(None, num_classes=10, config=tiny_config_values(), lr=0.1, warmup_epochs=0)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    make_trainer(max_steps=1, enable_checkpointing=True, callbacks=[checkpoint]).fit(probe, dm)
    path = tmp_path / "last.ckpt"
    loaded = torch.load(path, weights_only=True)
    assert resolve_augment(loaded[DigitsDataModule.CHECKPOINT_HYPER_PARAMS_KEY]["augment"]) == augment
    assert DigitsDataModule.load_from_checkpoint(path, weights_only=True).augment == augment


@pytest.mark.parametrize("given, want", [
    ("finetune", RECIPES["finetune"]),
    ({"crop_scale": [0.5, 1.0], "hflip": False}, Augment(crop_scale=(0.5, 1.0), hflip=False)),
    (None, None),
])
def test_digits_augment_through_jsonargparse(given, want):
    parser = ArgumentParser()
    parser.add_class_arguments(DigitsDataModule, "data")
    config = parser.parse_object({"data": {"image_size": 16, "augment": given}})
    dm = parser.instantiate(config).data
    assert isinstance(dm, DigitsDataModule)
    assert dm.augment == want


def test_digits_augment_mapping_from_yaml_through_jsonargparse():
    parser = ArgumentParser()
    parser.add_class_arguments(DigitsDataModule, "data")
    config = parser.parse_string(
        "data:\n  image_size: 16\n  augment:\n    crop_scale: [0.3, 1.0]\n    rand_augment: rand-m7\n")
    dm = parser.instantiate(config).data
    assert dm.augment == Augment(crop_scale=(0.3, 1.0), rand_augment="rand-m7")
