"""Linear probing and fine-tuning: one shallow base, two systems that differ in what they train.

`LitLinearProbe`: frozen encoder (kept in eval mode), BatchNorm + Linear head, LARS.
`LitFineTune`: everything trains, layer-wise lr decay, AdamW, mixup/cutmix, label smoothing.
Both start from `pretrained` weights (a LitMAE checkpoint or any `load_pretrained` source), or
from a random encoder with `pretrained: null` and a `config` (the baseline).
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch import LightningDataModule
from timm.data import Mixup
from torch import Tensor
from torch.utils.data import DataLoader
from torchmetrics.classification import MulticlassAccuracy

from lit_mae.feature_cache import encode_dataset, loader_like
from lit_mae.lars import LARS
from lit_mae.models import MAEConfig, ViTClassifier
from lit_mae.models.encoder import PoolKind
from lit_mae.optim import parameter_ndims, param_groups_layer_decay, warmup_cosine_scheduler
from lit_mae.pretrained import load_encoder
from lit_mae.training import NonFiniteGuard, NonFinitePolicy, effective_lr, schedule_steps


class LitClassifier(NonFiniteGuard, LightningModule):
    """Shared by the probe and fine-tuning: encoder + head, loading, metrics, steps, schedule.

    `num_classes: null` takes the DataModule's `num_classes` when the Trainer sets the model up.
    `on_nonfinite` / `max_consecutive_skips`: what a NaN or inf training loss does, as in `LitMAE`.
    """

    def __init__(self, num_classes: int | None, pretrained: str | None, config: MAEConfig | None,
                 img_size: int | None, pool: PoolKind, head_batchnorm: bool, head_init_std: float,
                 base_lr: float, lr: float | None, weight_decay: float, warmup_epochs: float,
                 min_lr: float, drop_path_rate: float = 0.0, on_nonfinite: NonFinitePolicy = "raise",
                 max_consecutive_skips: int = 10) -> None:
        super().__init__()
        self.init_nonfinite_guard(on_nonfinite, max_consecutive_skips)
        if pretrained is not None:
            arch, self._encoder_state = load_encoder(pretrained, img_size)
        elif config is not None:
            arch = config if isinstance(config, MAEConfig) else MAEConfig.from_dict(config)
            arch, self._encoder_state = arch.replace(img_size=img_size or arch.img_size), None
        else:
            raise ValueError("give `pretrained` weights, or `config` for a randomly initialised encoder")
        self.arch = arch.replace(drop_path_rate=drop_path_rate)
        self.pool, self.head_batchnorm, self.head_init_std = pool, head_batchnorm, head_init_std
        self.base_lr, self.lr, self.weight_decay = base_lr, lr, weight_decay
        self.warmup_epochs, self.min_lr = warmup_epochs, min_lr
        self.model: ViTClassifier | None = None
        if num_classes is not None:
            self._build(num_classes)

    def _build(self, num_classes: int) -> None:
        self.model = ViTClassifier(self.arch, num_classes, self.pool, self.head_batchnorm, self.head_init_std)
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
        # the checkpoint holds the weights: rebuild from the architecture, not from `pretrained`
        hparams = checkpoint.get("hyper_parameters", {})
        hparams.update(pretrained=None, config=self.arch.to_dict(), img_size=None)

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images)

    def _labelled(self, batch: Any) -> tuple[Tensor, Tensor]:
        if not (isinstance(batch, (tuple, list)) and len(batch) >= 2):
            raise TypeError(f"classification needs (images, labels) batches, got {type(batch).__name__}")
        return batch[0], batch[1]

    def _evaluate(self, batch: Any, stage: str) -> None:
        images, labels = self._labelled(batch)
        logits = self(images)
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
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        features = self.model.forward_features(images)
        return {"embedding": features, "logits": self.model.forward_head(features)}

    def peak_lr(self) -> float:
        return self.lr if self.lr is not None else effective_lr(self.trainer, self.base_lr)

    def with_schedule(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        total, warmup = schedule_steps(self.trainer, self.warmup_epochs)
        schedule = warmup_cosine_scheduler(optimizer, total, warmup, self.min_lr)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


class LitLinearProbe(LitClassifier):
    """The paper's linear probe: frozen encoder in eval mode, BatchNorm1d(affine=False) + Linear,
    LARS (momentum 0.9, trust 0.001), lr = base_lr x effective batch / 256, warmup then cosine.

    `cache_features: true` encodes the training and validation sets once per fit and trains the
    head on the stored features: the same numbers as encoding every batch, much faster. It needs
    a DataModule without training augmentation (`augment: null`).
    """

    _CACHED_HOOKS = ("train_dataloader", "val_dataloader")

    def __init__(self, pretrained: str | None, num_classes: int | None = None, config: MAEConfig | None = None,
                 img_size: int | None = None, pool: PoolKind = "cls", base_lr: float = 0.1,
                 lr: float | None = None, weight_decay: float = 0.0, momentum: float = 0.9,
                 warmup_epochs: float = 10.0, min_lr: float = 0.0, cache_features: bool = False,
                 on_nonfinite: NonFinitePolicy = "raise", max_consecutive_skips: int = 10) -> None:
        super().__init__(num_classes, pretrained, config, img_size, pool, head_batchnorm=True, head_init_std=0.01,
                         base_lr=base_lr, lr=lr, weight_decay=weight_decay, warmup_epochs=warmup_epochs,
                         min_lr=min_lr, on_nonfinite=on_nonfinite, max_consecutive_skips=max_consecutive_skips)
        self.momentum, self.cache_features = momentum, cache_features
        self._features: dict[str, tuple[Tensor, Tensor]] = {}
        self.save_hyperparameters()

    def prepare_model(self, model: ViTClassifier) -> None:
        for name, param in model.named_parameters():
            param.requires_grad_(name.startswith("head."))
        model.encoder.eval()

    def train(self, mode: bool = True) -> LitLinearProbe:
        super().train(mode)
        if self.model is not None:  # the frozen encoder (and fc_norm) never switch to train mode
            self.model.encoder.eval()
            self.model.fc_norm.eval()
        return self

    def features(self, inputs: Tensor) -> Tensor:
        """(B, D) features of images (B, C, H, W); cached features (B, D) pass through."""
        if inputs.ndim == 2:
            return inputs
        with torch.no_grad():
            return self.model.forward_features(inputs)

    def forward(self, inputs: Tensor) -> Tensor:
        return self.model.forward_head(self.features(inputs))

    def training_step(self, batch: Any, batch_idx: int) -> Tensor | None:
        inputs, labels = self._labelled(batch)
        logits = self(inputs)
        loss = self.guard_loss(F.cross_entropy(logits, labels), inputs, lambda: {"logits": logits})
        if loss is None:
            return self.skipped_update()
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True)
        return loss

    def configure_optimizers(self) -> dict[str, Any]:
        params = [p for p in self.model.parameters() if p.requires_grad]
        return self.with_schedule(LARS(params, lr=self.peak_lr(), weight_decay=self.weight_decay,
                                       momentum=self.momentum))

    def setup(self, stage: str) -> None:
        if self.cache_features and stage == "fit":
            self._serve_cached_features(self.trainer.datamodule)

    def teardown(self, stage: str) -> None:
        if self.trainer.datamodule is not None:
            for hook in self._CACHED_HOOKS:
                vars(self.trainer.datamodule).pop(hook, None)  # the DataModule's own methods again
        self._features.clear()

    def _serve_cached_features(self, datamodule: LightningDataModule | None) -> None:
        if datamodule is None:
            raise ValueError("LitLinearProbe.cache_features needs a LightningDataModule")
        if getattr(datamodule, "augment", None) is not None:
            raise ValueError(f"LitLinearProbe.cache_features: {type(datamodule).__name__} augments its training "
                             f"images (augment={datamodule.augment}); set the DataModule's augment to null "
                             "or cache_features to false")
        for hook in self._CACHED_HOOKS:  # the Trainer asks the DataModule for loaders through these
            setattr(datamodule, hook, functools.partial(self._cached_loader, hook, getattr(datamodule, hook)))

    def _cached_loader(self, hook: str, original: Any) -> Any:
        loader = original()
        if not isinstance(loader, DataLoader):
            return loader  # several loaders: served as they are
        if hook not in self._features:
            encoded = encode_dataset(loader, self.model.forward_features, self.trainer.strategy.batch_to_device,
                                     self.trainer.precision_plugin.forward_context)
            if encoded is None:
                raise ValueError(f"LitLinearProbe.cache_features: the DataModule's {hook} has no batches to encode")
            self._features[hook] = encoded
        return loader_like(loader, *self._features[hook])


class LitFineTune(LitClassifier):
    """The paper's fine-tuning: average pooling + fresh fc_norm (or cls), head std 2e-5, drop path,
    trainable position table, layer-wise lr decay, AdamW, mixup/cutmix and label smoothing."""

    def __init__(self, pretrained: str | None, num_classes: int | None = None, config: MAEConfig | None = None,
                 img_size: int | None = None, pool: PoolKind = "avg", base_lr: float = 5e-4,
                 lr: float | None = None, weight_decay: float = 0.05, layer_decay: float = 0.75,
                 drop_path_rate: float = 0.1, warmup_epochs: float = 5.0, min_lr: float = 1e-6,
                 mixup: float = 0.8, cutmix: float = 1.0, label_smoothing: float = 0.1,
                 on_nonfinite: NonFinitePolicy = "raise", max_consecutive_skips: int = 10) -> None:
        super().__init__(num_classes, pretrained, config, img_size, pool, head_batchnorm=False,
                         head_init_std=2e-5, base_lr=base_lr, lr=lr, weight_decay=weight_decay,
                         warmup_epochs=warmup_epochs, min_lr=min_lr, drop_path_rate=drop_path_rate,
                         on_nonfinite=on_nonfinite, max_consecutive_skips=max_consecutive_skips)
        self.layer_decay = layer_decay
        self.mixup, self.cutmix, self.label_smoothing = mixup, cutmix, label_smoothing
        self._mixer: Mixup | None = None
        self.save_hyperparameters()

    def prepare_model(self, model: ViTClassifier) -> None:
        model.encoder.pos_embed.requires_grad_(True)  # fine-tuning trains the position table
        if self.pool == "avg":  # fc_norm replaces the final norm, which gets no gradient (DDP refuses
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
        images, targets = self.mix(*self._labelled(batch))
        logits = self.model(images)
        loss = torch.sum(-targets * F.log_softmax(logits, dim=-1), dim=-1).mean()
        loss = self.guard_loss(loss, images, lambda: {"logits": logits, "targets (mixed, smoothed)": targets})
        if loss is None:
            return self.skipped_update()
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True)
        return loss

    def configure_optimizers(self) -> dict[str, Any]:
        groups = param_groups_layer_decay(self.model, self.weight_decay, self.layer_decay, self.arch.depth,
                                          ndims=self.param_ndims)
        return self.with_schedule(torch.optim.AdamW(groups, lr=self.peak_lr()))
