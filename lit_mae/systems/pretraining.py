"""`LitMAE`: the MAE pretraining system (loss, masks, AdamW and the warmup-cosine schedule)."""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor

from lit_mae.datamodules.batch import read_batch
from lit_mae.interop import load_pretrained
from lit_mae.models import MAEConfig, MAEOutput, MaskedAutoencoderViT, patchify, resolve_config
from lit_mae.models.ops import NORM_PIX_EPS, num_kept, patch_mean_var
from lit_mae.optim import parameter_ndims, param_groups_weight_decay
from lit_mae.systems.base import LitSystem, NonFinitePolicy, check_numbers, step_generator

PresetName = Literal["tiny", "small", "base", "large", "huge"]


class LitMAE(LitSystem):
    """MAE pretraining. `.model` is the `MaskedAutoencoderViT`.

    Args:
        config: the full architecture; or give `preset` ("tiny" ... "huge") with `overrides`.
        base_lr: lr per 256 images; the lr used is base_lr x effective batch / 256.
        lr: an absolute lr instead of the scaled `base_lr`.
        weight_decay, betas: AdamW settings (no decay on 1-D parameters and biases).
        warmup_epochs: linear warmup length (fractions allowed), then cosine to `min_lr`.
        mask_ratio: overrides the config's ratio for training and validation.
        pretrained: start from released or earlier weights in any format `load_pretrained` reads
            (official `.pth`, Hugging Face, timm, lit-mae checkpoints); the architecture is the
            file's (with `overrides`), and an encoder-only file gets a fresh decoder (reported).
        compile: run training/validation steps through `torch.compile(model, fullgraph=True)` (the
            same masks and losses; the first steps pay for compiling).
        mask_seed: masks (and drop path) come from (mask_seed, global step, rank, place in the
            accumulation window), so a resumed run draws what an uninterrupted one would.
        on_nonfinite: a NaN or inf training loss stops the run ("raise", naming the step and what
            went into the loss) or skips that update ("skip", counted in `train/skipped_steps`);
            see `lit_mae.systems.base.LitSystem`.
        max_consecutive_skips: with "skip", stop anyway after this many skipped steps in a row.
        activation_checkpointing: recompute every encoder and decoder block in backward instead of
            keeping its activations (`MaskedAutoencoderViT.activation_checkpointing`): the same losses
            and gradients, less activation memory, about a third more compute per step. Under FSDP
            the strategy's `activation_checkpointing_policy: [lit_mae.models.layers.Block]` does the
            same through torch's checkpoint wrapper (docs/distributed.md); use one of the two.
    """

    def __init__(
        self,
        config: MAEConfig | None = None,
        preset: PresetName | None = None,
        overrides: dict[str, Any] | None = None,
        base_lr: float = 1.5e-4,
        lr: float | None = None,
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_epochs: float = 40.0,
        min_lr: float = 0.0,
        mask_ratio: float | None = None,
        mask_seed: int = 0,
        pretrained: str | None = None,
        compile: bool = False,
        on_nonfinite: NonFinitePolicy = "raise",
        max_consecutive_skips: int = 10,
        activation_checkpointing: bool = False,
    ) -> None:
        super().__init__(base_lr, lr, warmup_epochs, min_lr, on_nonfinite, max_consecutive_skips)
        check_numbers("LitMAE", non_negative={"weight_decay": weight_decay})
        if pretrained is not None:
            if config is not None or preset is not None:
                raise ValueError("LitMAE: `pretrained` brings its own architecture; drop `config`/`preset` "
                                 "(change fields with `overrides`)")
            ratio = {} if mask_ratio is None else {"mask_ratio": mask_ratio}
            self.model = load_pretrained(pretrained, decoder="init", **{**(overrides or {}), **ratio})
            arch = self.model.config
        else:
            arch = resolve_config(config, preset, overrides)
            if mask_ratio is not None:
                arch = arch.replace(mask_ratio=mask_ratio)
            self.model = MaskedAutoencoderViT(arch)
        self.model.activation_checkpointing = activation_checkpointing
        if num_kept(arch.num_patches, arch.mask_ratio) >= arch.num_patches:
            raise ValueError(
                f"LitMAE: mask_ratio={arch.mask_ratio!r} masks none of the {arch.num_patches} patches "
                f"({arch.img_size}x{arch.img_size} images in {arch.patch_size}-pixel patches): the loss averages "
                "over the masked patches, so it would be 0/0 (NaN); use a ratio that masks at least one "
                "(the paper: 0.75)")
        config = arch.to_dict() if config is not None else None  # plain data in the checkpoint
        self.save_hyperparameters()
        self.weight_decay, self.betas = weight_decay, tuple(betas)
        self.mask_seed = mask_seed
        self.step_latent: Tensor | None = None  # the latest training step's encoder output, detached
        self.param_ndims = parameter_ndims(self.model)  # before any strategy wraps the model
        # a plain attribute, not a submodule: the compiled wrapper must not enter the state dict
        self._steps = torch.compile(self.model.forward, fullgraph=True) if compile else self.model.forward

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        # the checkpoint holds the weights: rebuild from the architecture, not from `pretrained`
        hparams = checkpoint.get("hyper_parameters", {})
        if hparams.get("pretrained") is not None:
            hparams.update(pretrained=None, config=self.config.to_dict(), preset=None, overrides=None)

    @property
    def config(self) -> MAEConfig:
        return self.model.config

    @property
    def architecture(self) -> MAEConfig:
        return self.model.config

    def forward(self, images: Tensor, **kwargs: Any) -> MAEOutput:
        return self.model(images, **kwargs)

    def _forward(self, batch: object, stream: str, step: int, micro: int = 0) -> tuple[Tensor, MAEOutput]:
        images = read_batch(batch).images
        patch = self.config.patch_size
        num_patches = (images.shape[-2] // patch) * (images.shape[-1] // patch)  # L
        # drawn outside the model (what it would draw from this generator): compiled graphs take no generator
        noise = torch.rand(images.shape[0], num_patches,
                           generator=step_generator(self.mask_seed, step, self.global_rank, stream, micro))
        return images, self._steps(images, noise=noise)

    def _loss(self, batch: object, stream: str, step: int) -> Tensor:
        return self._forward(batch, stream, step)[1].loss

    def loss_components(self, images: Tensor, output: MAEOutput) -> dict[str, object]:
        """What went into a loss, for the message about a non-finite one."""
        parts: dict[str, object] = {"pred": output.pred,
                                    "masked patches": f"{int(output.mask.sum())} of {output.mask.numel()}"}
        if self.config.norm_pix_loss:
            _, variance = patch_mean_var(patchify(images.float(), self.config.patch_size))  # (B, L, 1)
            parts["norm_pix target variance"] = f"min {variance.min().item():.3g} (+{NORM_PIX_EPS:g} in the divisor)"
        return parts

    def training_step(self, batch: object, batch_idx: int) -> Tensor | None:
        """The loss (see `training_loss`). Also keeps the encoder's output on the visible patches,
        detached, as `step_latent` for callbacks (`OnlineLinearProbe` trains on it at no extra
        forward); None after a skipped non-finite step, whose features may be NaN too."""
        with self.seeded_randomness(self.mask_seed, "train/drop_path", batch_idx):  # the same in a resumed run
            images, output = self._forward(batch, "train", self.global_step, self.micro_batch(batch_idx))
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], on_step=True, on_epoch=False)
        loss = self.training_loss(output.loss, images, lambda: self.loss_components(images, output))
        self.step_latent = None if self.step_skipped else output.latent.detach()  # (B, 1+K, D)
        return loss

    def validation_step(self, batch: object, batch_idx: int) -> None:
        # the same masks at every validation, so that the numbers compare across epochs
        self.log("val/loss", self._loss(batch, "val", batch_idx), prog_bar=True, sync_dist=True)

    def test_step(self, batch: object, batch_idx: int) -> None:
        self.log("test/loss", self._loss(batch, "test", batch_idx), sync_dist=True)

    def predict_step(self, batch: object, batch_idx: int) -> dict[str, Tensor]:
        """Per-image features: the cls token of the unmasked encoder (B, D)."""
        tokens = self.model.encoder.forward_features(read_batch(batch).images)
        return {"embedding": self.model.encoder.pool(tokens, "cls")}

    def configure_optimizers(self) -> dict[str, Any]:
        groups = param_groups_weight_decay(self.model, self.weight_decay, ndims=self.param_ndims)
        return self.with_schedule(torch.optim.AdamW(groups, lr=self.peak_lr(), betas=self.betas))
