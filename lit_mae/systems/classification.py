"""Linear probing and fine-tuning: one shallow base, two systems that differ in what they train.

`LitLinearProbe`: frozen encoder (kept in eval mode), BatchNorm + Linear head, LARS; trains on
image batches or on the stored features of `lit_mae.systems.feature_cache.CachedFeatures`.
`LitFineTune`: everything trains, layer-wise lr decay, AdamW, mixup/cutmix, label smoothing.
Both start from `pretrained` weights (a LitMAE checkpoint or any `load_pretrained` source), or
from a random encoder with `pretrained: null` and a `config` (the baseline).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities.warnings import PossibleUserWarning
from timm.data import Mixup
from torch import Tensor
from torchmetrics.classification import MulticlassAccuracy

from lit_mae.datamodules.batch import read_batch
from lit_mae.models import MAEConfig, ViTClassifier
from lit_mae.models.encoder import PoolKind
from lit_mae.optim import LARS, parameter_ndims, param_groups_layer_decay
from lit_mae.systems.base import LitSystem, NonFinitePolicy, check_numbers
from lit_mae.systems.encoders import load_encoder
from lit_mae.systems.feature_cache import FeatureBatch


class LitClassifier(LitSystem):
    """Shared by the probe and fine-tuning: encoder + head, loading, metrics, steps, schedule.

    `num_classes: null` takes the DataModule's `num_classes` when the Trainer sets the model up.
    `in_chans`: the data's channel count when it differs from the weights' (the patch embedding is
    adapted by timm's `adapt_input_conv` rule, `lit_mae.interop.channels`; reported in a warning).
    `on_nonfinite` / `max_consecutive_skips`: what a NaN or inf training loss does, as in `LitMAE`.
    """

    def __init__(self, num_classes: int | None, pretrained: str | None, config: MAEConfig | None,
                 img_size: int | None, pool: PoolKind, head_batchnorm: bool, head_init_std: float,
                 base_lr: float, lr: float | None, weight_decay: float, warmup_epochs: float,
                 min_lr: float, drop_path_rate: float = 0.0, on_nonfinite: NonFinitePolicy = "raise",
                 max_consecutive_skips: int = 10, in_chans: int | None = None) -> None:
        super().__init__(base_lr, lr, warmup_epochs, min_lr, on_nonfinite, max_consecutive_skips)
        check_numbers(type(self).__name__, non_negative={"weight_decay": weight_decay})
        if pretrained is not None:
            arch, self._encoder_state = load_encoder(pretrained, img_size, in_chans)
        elif config is not None:
            arch = config if isinstance(config, MAEConfig) else MAEConfig.from_dict(config)
            arch = arch.replace(img_size=img_size or arch.img_size, in_chans=in_chans or arch.in_chans)
            self._encoder_state = None
        else:
            raise ValueError("give `pretrained` weights, or `config` for a randomly initialised encoder")
        self.arch = arch.replace(drop_path_rate=drop_path_rate)
        self.global_pool, self.head_batchnorm, self.head_init_std = pool, head_batchnorm, head_init_std
        self.weight_decay = weight_decay
        self.model: ViTClassifier | None = None
        if num_classes is not None:
            self._build(num_classes)

    def _build(self, num_classes: int) -> None:
        self.model = ViTClassifier(self.arch, num_classes, self.global_pool, self.head_batchnorm, self.head_init_std)
        if self._encoder_state is not None:
            self.model.encoder.load_state_dict(self._encoder_state, strict=True)
            self._encoder_state = None
        self.hparams["num_classes"] = num_classes  # so that a checkpoint rebuilds the same head
        top5 = min(5, num_classes)
        self.metrics = torch.nn.ModuleDict({
            f"{stage}_{name}": MulticlassAccuracy(num_classes, top_k=k, average="micro")
            for stage in ("val", "test") for name, k in (("top1", 1), ("top5", top5))
        })
        self.prepare_model(self.model)
        self.param_ndims = parameter_ndims(self.model)  # before any strategy wraps the model

    def prepare_model(self, model: ViTClassifier) -> None:
        """What a subclass trains (freezing, trainable position table)."""

    def configure_model(self) -> None:
        if self.model is not None:
            return
        num_classes = getattr(self.trainer.datamodule, "num_classes", None)
        if not isinstance(num_classes, int):
            raise ValueError("num_classes is not set and the DataModule has no integer `num_classes`")
        self._build(num_classes)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        # the checkpoint holds the weights: rebuild from the architecture, not from `pretrained`
        hparams = checkpoint.get("hyper_parameters", {})
        hparams.update(pretrained=None, config=self.arch.to_dict(), img_size=None, in_chans=None)

    @property
    def architecture(self) -> MAEConfig:
        return self.arch

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images)

    def _labelled(self, batch: Any) -> tuple[Tensor, Tensor]:
        """(images (B, C, H, W), labels (B,)) of any accepted batch."""
        batch = read_batch(batch)
        return batch.images, batch.require_labels(type(self).__name__)

    def _evaluate(self, batch: Any, stage: str) -> None:
        images, labels = self._labelled(batch)
        self.log_metrics(self(images), labels, stage)

    def log_metrics(self, logits: Tensor, labels: Tensor, stage: str) -> None:
        """Loss, top-1 and top-5 of (B, num_classes) logits, as `{stage}/loss`, `{stage}/acc_top1` ..."""
        self.log(f"{stage}/loss", F.cross_entropy(logits, labels), prog_bar=True, sync_dist=True)
        for k in ("top1", "top5"):
            metric = self.metrics[f"{stage}_{k}"]
            metric(logits, labels)
            self.log(f"{stage}/acc_{k}", metric, prog_bar=k == "top1")

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def predict_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        """{"embedding": (B, D) pre-logit features, "logits": (B, num_classes)}."""
        features = self.model.forward_head(self.model.forward_features(read_batch(batch).images), pre_logits=True)
        return {"embedding": features, "logits": self.model.classify(features)}


class LitLinearProbe(LitClassifier):
    """The paper's linear probe: frozen encoder in eval mode, BatchNorm1d(affine=False) + Linear,
    LARS (momentum 0.9, trust 0.001), lr = base_lr x effective batch / 256, warmup then cosine.

    Batches are images (any shape `read_batch` accepts), encoded on the fly, or the
    `FeatureBatch`es of a DataModule wrapped in `CachedFeatures`, which encodes the training and
    validation sets once per fit with `encode` (the same numbers, much faster).
    """

    def __init__(self, pretrained: str | None, num_classes: int | None = None, config: MAEConfig | None = None,
                 img_size: int | None = None, pool: PoolKind = "cls", base_lr: float = 0.1,
                 lr: float | None = None, weight_decay: float = 0.0, momentum: float = 0.9,
                 warmup_epochs: float = 10.0, min_lr: float = 0.0,
                 on_nonfinite: NonFinitePolicy = "raise", max_consecutive_skips: int = 10,
                 in_chans: int | None = None) -> None:
        super().__init__(num_classes, pretrained, config, img_size, pool, head_batchnorm=True, head_init_std=0.01,
                         base_lr=base_lr, lr=lr, weight_decay=weight_decay, warmup_epochs=warmup_epochs,
                         min_lr=min_lr, on_nonfinite=on_nonfinite, max_consecutive_skips=max_consecutive_skips,
                         in_chans=in_chans)
        self.momentum = momentum
        self.save_hyperparameters()

    def prepare_model(self, model: ViTClassifier) -> None:
        for name, param in model.named_parameters():
            param.requires_grad_(name.startswith("head."))
        model.encoder.eval()

    def on_fit_start(self) -> None:
        super().on_fit_start()
        # Lightning warns about modules in eval mode at the start of training; the frozen encoder
        # (and fc_norm) are in eval mode by design. Only that exact count is silenced: any other
        # module left in eval mode still shows the warning.
        encoder = sum(1 for _ in self.model.encoder.modules())  # fc_norm too, when Lightning sees it in eval
        warnings.filterwarnings("ignore", message=rf"Found ({encoder}|{encoder + 1}) module\(s\) in eval mode at the "
                                                  "start of training", category=PossibleUserWarning)

    def train(self, mode: bool = True) -> LitLinearProbe:
        super().train(mode)
        if self.model is not None:  # the frozen encoder (and fc_norm) never switch to train mode
            self.model.encoder.eval()
            self.model.fc_norm.eval()
        return self

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """(B, C, H, W) images -> (B, D) pre-logit features of the frozen encoder."""
        return self.model.forward_head(self.model.forward_features(images), pre_logits=True)

    def _features(self, batch: Any) -> tuple[Tensor, Tensor]:
        """(features (B, D), labels (B,)) of an image batch or a `FeatureBatch`."""
        if isinstance(batch, FeatureBatch):
            return batch.features, batch.labels
        images, labels = self._labelled(batch)
        return self.encode(images), labels

    def training_step(self, batch: Any, batch_idx: int) -> Tensor | None:
        features, labels = self._features(batch)
        inputs = features if isinstance(batch, FeatureBatch) else read_batch(batch).images  # for the NaN report
        logits = self.model.classify(features)
        return self.training_loss(F.cross_entropy(logits, labels), inputs, lambda: {"logits": logits})

    def _evaluate(self, batch: Any, stage: str) -> None:
        features, labels = self._features(batch)
        self.log_metrics(self.model.classify(features), labels, stage)

    def configure_optimizers(self) -> dict[str, Any]:
        params = [p for p in self.model.parameters() if p.requires_grad]
        return self.with_schedule(LARS(params, lr=self.peak_lr(), weight_decay=self.weight_decay,
                                       momentum=self.momentum))


class LitFineTune(LitClassifier):
    """The paper's fine-tuning: average pooling + fresh fc_norm (or cls), head std 2e-5, drop path,
    trainable position table, layer-wise lr decay, AdamW, mixup/cutmix and label smoothing.

    Mixup/cutmix and drop path draw from RNGs seeded by (`mix_seed`, global step, rank, place in
    the accumulation window) at each training batch, so a resumed run draws what an uninterrupted
    one would. (Not `seed`: Lightning merges the module's and the DataModule's hyper-parameters
    and refuses one name with two values.)"""

    def __init__(self, pretrained: str | None, num_classes: int | None = None, config: MAEConfig | None = None,
                 img_size: int | None = None, pool: PoolKind = "avg", base_lr: float = 5e-4,
                 lr: float | None = None, weight_decay: float = 0.05, layer_decay: float = 0.75,
                 drop_path_rate: float = 0.1, warmup_epochs: float = 5.0, min_lr: float = 1e-6,
                 mixup: float = 0.8, cutmix: float = 1.0, label_smoothing: float = 0.1, mix_seed: int = 0,
                 on_nonfinite: NonFinitePolicy = "raise", max_consecutive_skips: int = 10,
                 in_chans: int | None = None) -> None:
        super().__init__(num_classes, pretrained, config, img_size, pool, head_batchnorm=False,
                         head_init_std=2e-5, base_lr=base_lr, lr=lr, weight_decay=weight_decay,
                         warmup_epochs=warmup_epochs, min_lr=min_lr, drop_path_rate=drop_path_rate,
                         on_nonfinite=on_nonfinite, max_consecutive_skips=max_consecutive_skips, in_chans=in_chans)
        self.layer_decay = layer_decay
        self.mixup, self.cutmix, self.label_smoothing, self.mix_seed = mixup, cutmix, label_smoothing, mix_seed
        self._mixer: Mixup | None = None
        self.save_hyperparameters()

    def prepare_model(self, model: ViTClassifier) -> None:
        model.encoder.pos_embed.requires_grad_(True)  # fine-tuning trains the position table
        if self.global_pool == "avg":  # fc_norm replaces the final norm, which gets no gradient (DDP refuses
            model.encoder.norm.requires_grad_(False)  # parameters that take no part in the loss)

    def mix(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Mixup/CutMix with smoothed soft targets (timm), or smoothed one-hot targets when both are off."""
        num_classes = self.model.head.out_features
        if self.mixup > 0 or self.cutmix > 0:
            if self._mixer is None:  # built once, when the head (and so num_classes) exists
                self._mixer = Mixup(mixup_alpha=self.mixup, cutmix_alpha=self.cutmix,
                                    label_smoothing=self.label_smoothing, num_classes=num_classes)
            if images.shape[0] % 2 == 0:
                return self._mixer(images, labels)
        off = self.label_smoothing / num_classes
        return images, F.one_hot(labels, num_classes).float() * (1 - self.label_smoothing) + off

    def training_step(self, batch: Any, batch_idx: int) -> Tensor | None:
        with self.seeded_randomness(self.mix_seed, "train/mix", batch_idx):
            images, targets = self.mix(*self._labelled(batch))
            logits = self.model(images)
        loss = torch.sum(-targets * F.log_softmax(logits, dim=-1), dim=-1).mean()
        return self.training_loss(loss, images, lambda: {"logits": logits, "targets (mixed, smoothed)": targets})

    def configure_optimizers(self) -> dict[str, Any]:
        groups = param_groups_layer_decay(self.model, self.weight_decay, self.layer_decay, self.arch.depth,
                                          ndims=self.param_ndims)
        return self.with_schedule(torch.optim.AdamW(groups, lr=self.peak_lr()))
