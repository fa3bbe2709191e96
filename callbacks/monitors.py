"""Representation monitors that run alongside MAE pretraining: an online linear probe and a kNN classifier.

Both read the encoder of the module (`pl_module.model.encoder`, as in `LitMAE` and the classifiers)
without gradients: the online probe trains on the features the training step computed (or on full
images), both evaluate on full, unmasked images. Pretraining, its masks and its random streams are
left as they are. Both switch themselves off, with one info message, when the data carries no labels,
and under a strategy that shards the weights (FSDP, ModelParallel): they call the encoder outside
the training step, where a sharded model's weights are not gathered.
"""

from __future__ import annotations

import logging
from typing import Any, Literal, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset
from torchmetrics.utilities.distributed import gather_all_tensors

from lit_mae.datamodules.batch import read_batch
from lit_mae.models.encoder import PoolKind
from lit_mae.systems.feature_cache import encode_dataset

log = logging.getLogger(__name__)
ProbeFeatures = Literal["step", "unmasked"]


def sharded_strategy(trainer: Trainer) -> str | None:
    """The name of the Trainer's strategy when it shards the weights across ranks (FSDP,
    ModelParallel), else None. Such a model runs only inside its wrapped forward, on every rank."""
    if isinstance(trainer.strategy, (FSDPStrategy, ModelParallelStrategy)):
        return type(trainer.strategy).__name__
    return None


def distributed(trainer: Trainer) -> bool:
    """Several processes, and a process group to talk through."""
    return trainer.world_size > 1 and dist.is_available() and dist.is_initialized()


def gather_rows(trainer: Trainer, tensor: Tensor) -> Tensor:
    """(B, ...) of this rank -> (sum of B over ranks, ...), rank 0's rows first; sizes may differ."""
    if not distributed(trainer):
        return tensor
    return torch.cat(gather_all_tensors(tensor.contiguous()))


def encode(pl_module: LightningModule, images: Tensor, pool: PoolKind = "cls") -> Tensor:
    """(B, C, H, W) -> (B, D) float32 pooled features of the unmasked encoder, without gradients."""
    encoder = pl_module.model.encoder
    with torch.no_grad(), pl_module.trainer.precision_plugin.forward_context():
        return encoder.pool(encoder.forward_features(images), pool).float()


class OnlineLinearProbe(Callback):
    """A linear classifier on detached encoder features, trained during pretraining.

    On every `every_n_steps`-th training batch of an epoch (batch index 0, N, 2N, ...) the head
    (BatchNorm1d without affine + Linear, as the paper's probe) takes one step of its own AdamW on
    the batch's features, detached:

    - `features="step"` (default): the encoder output the training step already computed, which
      `LitMAE.training_step` keeps as `pl_module.step_latent` (B, 1+K, D): the image seen through
      its visible patches only (25% at mask ratio 0.75). Free: no extra forward. A module that
      keeps no `step_latent` gets the "unmasked" features instead (one info message).
    - `features="unmasked"`: the full training images once more through the encoder, under
      `no_grad`: one encoder forward of all patches (about 4x the masked forward at mask ratio
      0.75). For ViT-S/16 at 224 px that is about 23% of a training step's FLOPs, for ViT-B 60%,
      for ViT-L as much as the step itself.

    Validation always encodes the full validation images. The digits accuracy of both kinds of
    features, and the cost of each, are in benchmarks/RESULTS.md. Logs `online_probe/train_loss`,
    `online_probe/train_acc` (on the training batches' features, as they come) and
    `online_probe/val_acc` (top-1 on the validation images, every validation).

    Args:
        num_classes: classes of the head; None takes the DataModule's `num_classes`.
        lr, weight_decay: the head's AdamW settings.
        pool: "cls" or "avg" features ("avg" of the visible patches with `features="step"`).
        every_n_steps: train the head on one training batch in this many (1: every batch).
        features: "step" or "unmasked", the training features (above).

    Off (one info message) without `num_classes`, when the training batches carry no labels or
    only -1 (unlabelled; single -1 labels in a batch are ignored), and under FSDP/ModelParallel.

    A training step whose update was skipped for a non-finite loss (`pl_module.step_skipped`,
    see `LitSystem`) trains no head either: its features may be NaN.

    Under DDP the features (B, D) of each rank's shard and its labels are gathered (one
    all-gather of B x D floats per step), so every rank's head steps on the global batch, as one
    process with the global batch would; the heads start from rank 0's weights and stay
    identical. `val_acc` is averaged over ranks.
    """

    def __init__(self, num_classes: int | None = None, lr: float = 1e-3, weight_decay: float = 0.0,
                 pool: PoolKind = "cls", every_n_steps: int = 1, features: ProbeFeatures = "step") -> None:
        if pool not in ("cls", "avg"):
            raise ValueError(f"OnlineLinearProbe.pool must be 'cls' or 'avg', got {pool!r}")
        if not isinstance(every_n_steps, int) or every_n_steps < 1:
            raise ValueError(f"OnlineLinearProbe.every_n_steps must be an integer >= 1, got {every_n_steps!r}")
        if features not in ("step", "unmasked"):
            raise ValueError(f"OnlineLinearProbe.features must be 'step' or 'unmasked', got {features!r}")
        self.num_classes, self.lr, self.weight_decay, self.pool = num_classes, lr, weight_decay, pool
        self.every_n_steps, self.features = every_n_steps, features
        self._told_unmasked = False
        self.head: nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None

    @property
    def active(self) -> bool:
        return self.head is not None

    def _switch_off(self, reason: str) -> None:
        log.info("OnlineLinearProbe is off: %s", reason)
        self.head, self.optimizer = None, None

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # built here rather than in `setup`: the module's encoder exists (a classifier builds its
        # model in `configure_model`) and sits on its device
        if name := sharded_strategy(trainer):
            self._switch_off(f"the encoder is sharded by {name}")
            return
        num_classes = self.num_classes
        if num_classes is None:
            num_classes = getattr(trainer.datamodule, "num_classes", None)
        if not isinstance(num_classes, int) or num_classes < 2:
            self._switch_off(f"no num_classes (argument or DataModule `num_classes`), got {num_classes!r}")
            return
        width = pl_module.model.encoder.config.embed_dim  # D
        self.head = nn.Sequential(nn.BatchNorm1d(width, affine=False), nn.Linear(width, num_classes))
        self.head.to(pl_module.device)
        if distributed(trainer):  # one head for all ranks, whatever their random states
            for tensor in self.head.state_dict().values():
                dist.broadcast(tensor, src=0)
        self.optimizer = torch.optim.AdamW(self.head.parameters(), lr=self.lr, weight_decay=self.weight_decay)

    def _labelled(self, batch: object) -> tuple[Tensor, Tensor] | None:
        """(images, labels) of the labelled samples of a batch, or None when it has none."""
        images, labels = read_batch(batch)
        if labels is None:
            return None
        keep = labels >= 0
        return images[keep], labels[keep]

    def _training_features(self, pl_module: LightningModule, images: Tensor) -> Tensor:
        """(B, D) float32 detached features of a training batch: the step's `step_latent` when asked
        for and kept, else the unmasked encoder's."""
        if self.features == "step":
            latent = getattr(pl_module, "step_latent", None)  # (B, 1+K, D)
            if isinstance(latent, Tensor) and latent.shape[0] == images.shape[0]:
                return pl_module.model.encoder.pool(latent.detach(), self.pool).float()
            if not self._told_unmasked:
                log.info("OnlineLinearProbe: %s keeps no `step_latent` of this batch; the probe encodes the full "
                         "training images once more (features='unmasked')", type(pl_module).__name__)
                self._told_unmasked = True
        return encode(pl_module, images, self.pool)

    def _global_batch(self, trainer: Trainer, pl_module: LightningModule, batch: object
                      ) -> tuple[Tensor, Tensor] | None:
        """(features (N, D), labels (N,)) of the labelled samples of every rank's batch; None: no labels."""
        images, labels = read_batch(batch)
        if labels is None:
            return None
        # the whole local batch, labelled or not, so that every rank sends the same shapes whatever
        # its labels; the unlabelled rows are dropped after gathering
        features = gather_rows(trainer, self._training_features(pl_module, images))  # (N, D)
        labels = gather_rows(trainer, labels)  # (N,)
        keep = labels >= 0
        return features[keep], labels[keep]

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if self.features == "step" and getattr(pl_module, "step_latent", None) is not None:
            pl_module.step_latent = None  # only this batch's step may fill it: never an older batch's features

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        # the batch index within the epoch: the same on every rank and in a resumed run
        if not self.active or batch_idx % self.every_n_steps:
            return
        if getattr(pl_module, "step_skipped", False):
            return  # a skipped non-finite step, on every rank alike
        labelled = self._global_batch(trainer, pl_module, batch)
        if labelled is None or len(labelled[1]) == 0:
            self._switch_off("the training batches carry no labels (or only -1)")
            return
        features, labels = labelled  # (N, D) detached, (N,): every rank's labelled samples
        if len(labels) < 2:
            return  # BatchNorm cannot train on one sample
        self.head.train()
        with torch.enable_grad():
            logits = self.head(features)  # (N, num_classes)
            loss = F.cross_entropy(logits, labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        accuracy = (logits.argmax(dim=1) == labels).float().mean()
        # epoch means of the global batches (the same on every rank)
        pl_module.log("online_probe/train_loss", loss.detach(), on_step=False, on_epoch=True, batch_size=len(labels),
                      sync_dist=True)
        pl_module.log("online_probe/train_acc", accuracy, on_step=False, on_epoch=True, batch_size=len(labels),
                      sync_dist=True)

    def on_validation_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if not self.active or trainer.sanity_checking:
            return
        labelled = self._labelled(batch)
        if labelled is None or len(labelled[1]) == 0:
            return
        images, labels = labelled
        self.head.eval()
        with torch.no_grad():
            predicted = self.head(encode(pl_module, images, self.pool)).argmax(dim=1)  # (B,)
        accuracy = (predicted == labels).float().mean()
        pl_module.log("online_probe/val_acc", accuracy, on_step=False, on_epoch=True, batch_size=len(labels),
                      sync_dist=True, add_dataloader_idx=False)


@torch.no_grad()
def knn_predict(train_features: Tensor, train_labels: Tensor, query_features: Tensor, num_classes: int,
                k: int = 20, temperature: float = 0.07, chunk_size: int = 1024) -> Tensor:
    """Weighted kNN labels (Q,) of queries (Q, D) from L2-normalised train features (N, D), labels (N,).

    The k most cosine-similar training samples vote for their class with weight exp(sim / T);
    the class with the largest summed vote wins (InstDisc, Wu et al. 2018; DINO's `knn_classifier`).
    Features must already be L2-normalised. `chunk_size` bounds the (chunk, N) similarity matrix.
    """
    if train_features.shape[0] != train_labels.shape[0]:
        raise ValueError(f"{train_features.shape[0]} train features but {train_labels.shape[0]} labels")
    k = min(k, train_features.shape[0])
    predictions = []
    for queries in query_features.split(chunk_size):
        similarity = queries @ train_features.T  # (q, N)
        top_sim, top_idx = similarity.topk(k, dim=1)  # (q, k)
        weights = (top_sim / temperature).exp()
        votes = torch.zeros(queries.shape[0], num_classes, dtype=weights.dtype, device=weights.device)
        votes.scatter_add_(1, train_labels[top_idx], weights)  # (q, num_classes)
        predictions.append(votes.argmax(dim=1))
    return torch.cat(predictions)


def single_loader(loaders: Any) -> DataLoader | None:
    """The DataLoader of `trainer.train_dataloader` / `val_dataloaders`, or the first of several."""
    if isinstance(loaders, DataLoader):
        return loaders
    if isinstance(loaders, Sequence) and loaders and isinstance(loaders[0], DataLoader):
        return loaders[0]
    if isinstance(loaders, dict) and loaders:
        return single_loader(next(iter(loaders.values())))
    return None


class KNNMonitor(Callback):
    """Weighted kNN top-1 accuracy of the validation set against the training set, as `knn/val_acc`.

    Every `every_n_epochs` epochs, at the end of validation, encodes the training set and the
    validation set (cls features, L2-normalised, unmasked, no gradients) and classifies each
    validation image with `knn_predict`. The training images come through the training dataset
    as it is: if the DataModule augments them (`augment` set), the bank holds one augmented view
    of each (an info message says so; `augment: null` gives the clean number).
    `max_train_samples` encodes a fixed random subset of the training set (seeded, same each time).

    Cost: one encoder forward of the training and validation sets each time it runs. Under DDP
    every rank encodes the whole of both sets (not its shard) and computes the same number, so the
    result is correct, and the work is repeated on each rank. Off (one info message) when the data
    carries no labels (or only -1), and under FSDP/ModelParallel.
    """

    def __init__(self, every_n_epochs: int = 5, k: int = 20, temperature: float = 0.07,
                 max_train_samples: int | None = None) -> None:
        if every_n_epochs < 1 or k < 1 or temperature <= 0:
            raise ValueError(f"KNNMonitor: every_n_epochs={every_n_epochs} and k={k} must be at least 1, "
                             f"temperature={temperature} positive")
        if max_train_samples is not None and max_train_samples < 1:
            raise ValueError(f"KNNMonitor.max_train_samples must be at least 1 or None, got {max_train_samples}")
        self.every_n_epochs, self.k, self.temperature = every_n_epochs, k, temperature
        self.max_train_samples = max_train_samples
        self.enabled = True
        self._warned_augment = False

    def _switch_off(self, reason: str) -> None:
        log.info("KNNMonitor is off: %s", reason)
        self.enabled = False

    def _encode_loader(self, trainer: Trainer, pl_module: LightningModule, loader: DataLoader,
                       limit: int | None) -> tuple[Tensor, Tensor] | None:
        """(N, D) normalised features and (N,) labels of the loader's dataset, in order; None if unlabelled."""
        dataset = loader.dataset
        if limit is not None and limit < len(dataset):
            chosen = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))[:limit]
            dataset = Subset(dataset, chosen.tolist())
        encoded = encode_dataset(loader, lambda images: F.normalize(encode(pl_module, images), dim=1),
                                 trainer.strategy.batch_to_device, dataset=dataset,
                                 to_cpu=False)  # the bank stays on the module's device
        if encoded is None or encoded[1] is None:
            return None
        features, labels = encoded  # (N, D), (N,)
        keep = labels >= 0
        return features[keep], labels[keep]

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.enabled or trainer.sanity_checking or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        if name := sharded_strategy(trainer):
            self._switch_off(f"the encoder is sharded by {name}")
            return
        train_loader = single_loader(trainer.train_dataloader)
        val_loader = single_loader(trainer.val_dataloaders)
        if train_loader is None or val_loader is None:
            self._switch_off("needs a training and a validation DataLoader")
            return
        if not self._warned_augment and getattr(trainer.datamodule, "augment", None) is not None:
            log.info("KNNMonitor: the training images are augmented (DataModule augment set); the kNN bank "
                     "holds one augmented view of each")
            self._warned_augment = True
        train = self._encode_loader(trainer, pl_module, train_loader, self.max_train_samples)
        val = self._encode_loader(trainer, pl_module, val_loader, None)
        if train is None or val is None or len(train[1]) == 0 or len(val[1]) == 0:
            self._switch_off("the training or validation batches carry no labels (or only -1)")
            return
        num_classes = int(max(train[1].max(), val[1].max())) + 1
        predicted = knn_predict(train[0], train[1], val[0], num_classes, self.k, self.temperature)
        accuracy = (predicted == val[1]).float().mean()
        # every rank computed the same number from the whole sets: the mean over ranks changes nothing
        pl_module.log("knn/val_acc", accuracy, on_step=False, on_epoch=True, sync_dist=True)
