"""Several processes on one machine: `--trainer.strategy ddp --trainer.devices 2 --trainer.accelerator
cpu` (gloo), run as users run it, through `python -m lit_mae`; Lightning's `ddp` strategy starts the
second process itself. FSDP needs GPUs (Lightning 2.6 refuses it on CPU, and torch's FSDP too).

Each DDP start costs seconds: one pretraining run (the shipped config, shrunk) serves the
checkpoint, file, lr and online-probe checks, and its checkpoint feeds the probe, fine-tune,
predict and equivalence runs. Each run gets its own free MASTER_PORT.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from lightning.pytorch import Callback, Trainer, seed_everything
from lightning.pytorch.strategies import FSDPStrategy
from torch.utils.data import DistributedSampler, Subset

import conftest
from conftest import REPO_ROOT, ImageDataModule, ImageDataset, assert_ok, tiny_cli_args
from lit_mae import LitMAE
from lit_mae.callbacks import EmbeddingWriter, KNNMonitor, OnlineLinearProbe, ReconstructionGridLogger
from lit_mae.datamodules import DigitsDataModule
from lit_mae.optim import param_groups_weight_decay
from lit_mae.systems.base import step_generator

CONFIGS = REPO_ROOT / "configs"
TESTS = Path(__file__).resolve().parent
TINY_ARGS = tiny_cli_args()
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.num_sanity_val_steps", "0"]
CPU_DDP = ["--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu"]
PRETRAIN_BATCH, PRETRAIN_ACCUMULATE, PRETRAIN_BASE_LR = 8, 2, 1.5e-3  # base_lr: configs/pretrain.yaml


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_all(commands: list[list[str]], cwd: Path, timeout: float = 240) -> list[subprocess.CompletedProcess]:
    """`conftest.run_all`, each command with its own MASTER_PORT; the tests folder is importable, so a
    child can read `conftest.ImageDataModule` as a class path. A hung collective is stopped whole:
    Lightning's second process joins its command's session."""
    path = os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))
    return conftest.run_all(commands, cwd, timeout, env=lambda: {"PYTHONPATH": path, "MASTER_PORT": str(free_port())})


def lit_mae(*args: str) -> list[str]:
    return [sys.executable, "-m", "lit_mae", *args]


def peak_lr(checkpoint: Path) -> float:
    """The lr the warmup-cosine schedule rises to, as the optimizer state in the checkpoint holds it."""
    state = torch.load(checkpoint, weights_only=True)
    peaks = {group["initial_lr"] for group in state["optimizer_states"][0]["param_groups"]}
    assert len(peaks) == 1, peaks  # every group starts from the one peak (lr_scale is applied on top)
    return peaks.pop()


def listing(folder: Path) -> set[str]:
    return {str(path.relative_to(folder)) for path in folder.rglob("*")}


class SaveProbeHead(Callback):
    """Test helper, given on the command line: each rank saves its online-probe head when fit ends."""

    def on_train_end(self, trainer: Trainer, pl_module) -> None:
        probe = next(c for c in trainer.callbacks if isinstance(c, OnlineLinearProbe))
        assert probe.active, "the online probe switched itself off"
        torch.save(probe.head.state_dict(), f"probe_head.rank{trainer.global_rank}.pt")


# --- pretraining: the shipped config on two processes --------------------------------------------

@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    """`fit --config configs/pretrain.yaml` on 2 CPU processes, 3 epochs of 4 batches of 8 per rank
    with gradient accumulation 2 (6 optimizer steps); grids every 2 epochs (epoch 1 from validation,
    epoch 2 when training ends), kNN at epoch 2; the run directory is the fixture's."""
    where = tmp_path_factory.mktemp("ddp_pretrain")
    config = yaml.safe_load((CONFIGS / "pretrain.yaml").read_text())
    for callback in config["trainer"]["callbacks"]:
        name = callback["class_path"].rsplit(".", 1)[-1]
        if name == "ReconstructionGridLogger":
            callback["init_args"]["every_n_epochs"] = 2
        if name == "KNNMonitor":
            callback["init_args"].update(every_n_epochs=3, max_train_samples=128)
    config["trainer"]["callbacks"].append({"class_path": "test_ddp.SaveProbeHead"})
    (where / "pretrain.yaml").write_text(yaml.safe_dump(config))
    result, = run_all([lit_mae("fit", "--config", "pretrain.yaml", *TINY_ARGS, *QUIET, *CPU_DDP,
                               "--data.init_args.batch_size", str(PRETRAIN_BATCH),
                               "--trainer.accumulate_grad_batches", str(PRETRAIN_ACCUMULATE),
                               "--trainer.max_epochs", "3", "--trainer.limit_train_batches", "4",
                               "--trainer.limit_val_batches", "2")], where)
    assert_ok(result)
    # the summary once, from rank 0 (it reads trainer.log_dir, a collective: asked on rank 0 alone it hung)
    assert result.stdout.count("fit finished after 3 epochs") == 1, result.stdout[-2000:]
    return where


def test_pretraining_writes_each_file_once_from_rank_zero(pretrained):
    run_dir = pretrained / "runs" / "pretrain"
    files = listing(run_dir)
    events = {name for name in files if name.startswith("events.out.tfevents")}
    assert len(events) == 1  # one TensorBoard writer: rank 0's
    assert files - events == {"config.yaml", "hparams.yaml", "checkpoints", "checkpoints/epoch002.ckpt",
                              "checkpoints/last.ckpt", "reconstructions", "reconstructions/epoch001.png",
                              "reconstructions/epoch002.png"}
    assert listing(pretrained) - {"pretrain.yaml", "probe_head.rank0.pt", "probe_head.rank1.pt"} == \
        {"runs", *(f"runs/pretrain/{name}" for name in files), "runs/pretrain"}
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 3 * 4 // PRETRAIN_ACCUMULATE

    log = EventAccumulator(str(run_dir / events.pop()))
    log.Reload()
    assert len(log.Images("val/reconstructions")) == 2  # each grid sent once
    for tag in ("knn/val_acc", "online_probe/val_acc", "online_probe/train_acc"):  # the monitors ran
        assert len(log.Scalars(tag)) >= 1, tag


def test_pretraining_lr_scales_with_devices_and_accumulation(pretrained):
    """lr = base_lr x per-device batch x devices x nodes x accumulation / 256, here x 8 x 2 x 1 x 2."""
    expected = PRETRAIN_BASE_LR * PRETRAIN_BATCH * 2 * 1 * PRETRAIN_ACCUMULATE / 256
    assert peak_lr(pretrained / "runs" / "pretrain" / "checkpoints" / "last.ckpt") == pytest.approx(expected)


def test_online_probe_heads_stay_identical_across_ranks(pretrained):
    """Each rank sees its own shard; the probe gathers the features, so both heads take the same
    steps on the global batch (each on its shard alone would drift apart, BatchNorm statistics first)."""
    heads = [torch.load(pretrained / f"probe_head.rank{rank}.pt", weights_only=True) for rank in (0, 1)]
    assert heads[0].keys() == heads[1].keys()
    for name in heads[0]:
        assert torch.equal(heads[0][name], heads[1][name]), name
    assert heads[0]["0.num_batches_tracked"] == 3 * 4  # one head step per training batch
    assert heads[0]["0.running_mean"].abs().sum() > 0  # it saw features


# --- linear probe and fine-tuning from that checkpoint -----------------------------------------

def test_probe_and_finetune_configs_run_on_two_processes(pretrained, tmp_path):
    """configs/linprobe.yaml and configs/finetune.yaml from the DDP checkpoint, side by side, each on
    2 processes: they train, test their best checkpoint, write each checkpoint once, and scale the lr
    by per-device batch 16 x 2 devices."""
    checkpoint = pretrained / "runs" / "pretrain" / "checkpoints" / "last.ckpt"
    base_lrs = {"linprobe": 25.6, "finetune": 2.0e-3}  # the configs' base_lr
    batch_size = {"linprobe": "--data.init_args.images.init_args.batch_size",  # CachedFeatures(images=...)
                  "finetune": "--data.init_args.batch_size"}
    results = run_all([lit_mae("fit", "--config", str(CONFIGS / f"{name}.yaml"), *QUIET, *CPU_DDP,
                               "--model.init_args.pretrained", str(checkpoint), batch_size[name], "16",
                               "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
                               "--trainer.limit_val_batches", "2") for name in base_lrs], tmp_path)
    for result, (name, base_lr) in zip(results, base_lrs.items()):
        assert_ok(result)
        assert "test/acc_top1" in result.stdout  # test_after_fit ran (on both ranks; rank 0 prints)
        run_dir = tmp_path / "runs" / name
        files = listing(run_dir)
        assert {f for f in files if f.startswith("checkpoints")} == {
            "checkpoints", "checkpoints/best-epoch000.ckpt", "checkpoints/epoch000.ckpt", "checkpoints/last.ckpt"}
        assert not any("rank" in f or f.startswith("version_") for f in files)
        assert peak_lr(run_dir / "checkpoints" / "last.ckpt") == pytest.approx(base_lr * 16 * 2 / 256)


# --- predictions: one file, the same rows as one process ---------------------------------------

def test_embedding_writer_gathers_one_file_equal_to_one_process(pretrained, tmp_path, one_thread):
    checkpoint = pretrained / "runs" / "pretrain" / "checkpoints" / "last.ckpt"
    (tmp_path / "predict.yaml").write_text(yaml.safe_dump({"trainer": {"logger": False, "callbacks": [
        {"class_path": "lit_mae.callbacks.EmbeddingWriter", "init_args": {"path": "emb.pt"}}]}}))
    result, = run_all([lit_mae("predict", "--config", str(pretrained / "runs" / "pretrain" / "config.yaml"),
                               "--config", "predict.yaml", *CPU_DDP, "--trainer.enable_progress_bar", "false",
                               "--ckpt_path", str(checkpoint))], tmp_path)
    assert_ok(result)
    assert {p.name for p in tmp_path.iterdir()} == {"predict.yaml", "runs", "emb.pt"}  # no per-rank files
    # without a logger the record goes beside the run's own (the config's default_root_dir), not here
    assert [str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.yaml") if p.name == "config.yaml"] == [
        "runs/pretrain/predict_0/config.yaml"]
    two = torch.load(tmp_path / "emb.pt", weights_only=True)

    digits = DigitsDataModule(image_size=16, channels=3, batch_size=8, seed=0)  # as in configs/pretrain.yaml
    Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
            callbacks=[EmbeddingWriter(tmp_path / "one.pt")]).predict(LitMAE.load_from_checkpoint(checkpoint),
                                                                      datamodule=digits)
    one = torch.load(tmp_path / "one.pt", weights_only=True)
    assert two.keys() == one.keys() == {"embeddings", "labels", "indices"}
    assert torch.equal(two["indices"], torch.arange(len(one["indices"])))  # every test image once, in order
    assert torch.equal(two["labels"], one["labels"])
    torch.testing.assert_close(two["embeddings"], one["embeddings"], rtol=1e-5, atol=1e-5)


# --- two processes compute what one process computes on the global batch ------------------------

GLOBAL_BATCH, STEPS, LR = 16, 3, 1e-3


def ddp_order(n: int, world: int, batch: int) -> list[int]:
    """The sample order of the single process that matches `world` DDP ranks of `batch` each.

    Lightning gives a training loader under DDP a `DistributedSampler(shuffle=True, seed=
    PL_GLOBAL_SEED)` whatever its own sampler (rank r takes every world-th index of one seeded
    permutation); global batch b is rank 0's batch b, then rank 1's, ... ."""
    shards = []
    for rank in range(world):
        sampler = DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=True, seed=0)
        sampler.set_epoch(0)
        shards.append(list(sampler))
    return [i for b in range(n // (world * batch)) for shard in shards for i in shard[b * batch:(b + 1) * batch]]


def single_process_reference(checkpoint: Path, per_rank_masks: bool) -> LitMAE:
    """LitMAE on one process with the global batch, the same data, weights and lr as the DDP run.

    `per_rank_masks`: the rows of each global batch get the masks their DDP rank draws, from
    (mask_seed, step, rank) (LitMAE's rule), instead of all 16 from rank 0's generator."""
    seed_everything(0)
    system = LitMAE(pretrained=str(checkpoint), lr=LR, warmup_epochs=0)
    if per_rank_masks:
        L = (system.config.img_size // system.config.patch_size) ** 2

        def forward(images: torch.Tensor, noise: torch.Tensor):
            per_rank = len(images) // 2
            noise = torch.cat([torch.rand(per_rank, L, generator=step_generator(0, system.global_step, rank))
                               for rank in (0, 1)])  # (B, L): rank 0's rows, then rank 1's
            return system.model(images, noise=noise)

        system._steps = forward  # LitMAE calls self._steps(images, noise=noise) with rank 0's noise
    dataset = Subset(ImageDataset(STEPS * GLOBAL_BATCH, 16, 3, "tuple"), ddp_order(STEPS * GLOBAL_BATCH, 2, 8))
    trainer = Trainer(accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(system, datamodule=ImageDataModule(batch_size=GLOBAL_BATCH, dataset=dataset))
    assert trainer.global_step == STEPS
    return system


def comparable(state: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    """A weight, flattened; of a qkv bias only the q and v parts. The k bias shifts every attention
    logit of a query by the same amount, which softmax ignores: its gradient is 0 up to rounding,
    and Adam, dividing by |g|, turns that rounding into lr-sized steps of arbitrary sign."""
    value = state[name].flatten()
    if name.endswith("attn.qkv.bias"):
        D = len(value) // 3
        return torch.cat([value[:D], value[2 * D:]])
    return value


def test_two_processes_match_one_process_on_the_global_batch(pretrained, tmp_path, one_thread):
    """2 processes x batch 8 against 1 process x batch 16, 3 AdamW steps from the same weights.

    What DDP must get right: the all-reduced gradient is the mean of the ranks' gradients, i.e. the
    gradient of the mean loss over the concatenated batch (MAE masks the same count of patches in
    every image, so the mean of per-rank means is the mean over all images), and the lr is the same
    for the same global batch. The masks come from (mask_seed, step, rank), so rank 1's masks are
    not the second half of a single process's: the reference gives each row its rank's mask.

    Tolerance: Adam's first steps are about lr x sign(gradient) per weight, so a wrong gradient
    shows as lr-sized differences. Measured: the weights (key biases aside, see `comparable`) agree
    to 1.2e-7 (float32 rounding of sums in another order), 1e-6 of the update's norm; drawing all
    16 masks from rank 0's stream instead gives 4e-3 (4 lr) and 0.57. Bounds: 1e-4 of the update
    and 1% of lr per weight.
    """
    checkpoint = pretrained / "runs" / "pretrain" / "checkpoints" / "last.ckpt"
    n = STEPS * GLOBAL_BATCH
    result, = run_all([lit_mae(
        "fit", "--seed_everything", "0", "--model", "lit_mae.LitMAE", "--model.init_args.pretrained", str(checkpoint),
        "--model.init_args.base_lr", str(LR * 256 / GLOBAL_BATCH), "--model.init_args.warmup_epochs", "0",
        "--data", "conftest.ImageDataModule", "--data.init_args.n", str(n), "--data.init_args.kind", "tuple",
        "--data.init_args.batch_size", str(GLOBAL_BATCH // 2), *CPU_DDP, *QUIET, "--trainer.max_epochs", "1",
        "--trainer.limit_val_batches", "0", "--trainer.logger", "false", "--trainer.enable_model_summary", "false",
        "--trainer.default_root_dir", ".")], tmp_path)
    assert_ok(result)
    saved, = (tmp_path / "checkpoints").glob("*.ckpt")
    state = torch.load(saved, weights_only=True)
    assert state["global_step"] == STEPS
    assert peak_lr(saved) == pytest.approx(LR)  # base_lr x 8 x 2 devices / 256

    initial = LitMAE(pretrained=str(checkpoint)).model
    trainable = [name for name, p in initial.named_parameters() if p.requires_grad]
    start = initial.state_dict()
    two = {name.removeprefix("model."): value for name, value in state["state_dict"].items()}

    def differences(reference: LitMAE) -> tuple[float, float]:
        """(|w_ddp - w_ref| / |w_ref - w_0|, max |w_ddp - w_ref|) over the trainable weights."""
        ref = reference.model.state_dict()
        update = torch.cat([comparable(ref, k) - comparable(start, k) for k in trainable])
        apart = torch.cat([comparable(two, k) - comparable(ref, k) for k in trainable])
        return float(apart.norm() / update.norm()), float(apart.abs().max())

    matched = differences(single_process_reference(checkpoint, per_rank_masks=True))
    rank0_masks = differences(single_process_reference(checkpoint, per_rank_masks=False))
    assert matched[0] < 1e-4 and matched[1] < 0.01 * LR, (matched, rank0_masks)
    assert rank0_masks[0] > 0.1 and rank0_masks[1] > LR  # the comparison tells another gradient apart


# --- sharded strategies --------------------------------------------------------------------------

def test_monitors_and_grid_switch_off_under_fsdp(tmp_path):
    """They run the encoder outside the wrapped forward, from one rank (the grid) or per batch:
    with sharded weights that would fail or hang, so they turn themselves off."""
    trainer = SimpleNamespace(strategy=FSDPStrategy(), world_size=1, log_dir=str(tmp_path),
                              default_root_dir=str(tmp_path), datamodule=SimpleNamespace(num_classes=10))
    probe = OnlineLinearProbe()
    probe.on_fit_start(trainer, SimpleNamespace())
    assert not probe.active
    knn = KNNMonitor(every_n_epochs=1)
    knn.on_validation_epoch_end(SimpleNamespace(**vars(trainer), sanity_checking=False, current_epoch=0), None)
    assert not knn.enabled
    grid = ReconstructionGridLogger()
    grid.setup(trainer, None, "fit")
    grid._images = [torch.zeros(1, 3, 16, 16)]
    with pytest.warns(UserWarning, match="FSDPStrategy"):
        grid._log(trainer, None, 0)
    assert not (tmp_path / "reconstructions").exists()


FSDP_YAML = {"trainer": {"strategy": {"class_path": "lightning.pytorch.strategies.FSDPStrategy", "init_args": {
    "auto_wrap_policy": ["lit_mae.models.layers.Block"], "sharding_strategy": "FULL_SHARD",
    "state_dict_type": "full"}}}}


@pytest.mark.skipif(not torch.cuda.is_available(), reason=(
    "FSDP needs CUDA: Lightning 2.6.6 refuses strategy 'fsdp' with accelerator 'cpu' (\"requires a GPU "
    "accelerator\"), and torch 2.14's FullyShardedDataParallel itself raises \"FSDP needs a non-CPU "
    "accelerator device\" when that check is bypassed"))
def test_fsdp_pretraining_with_block_auto_wrap(tmp_path):
    """FSDP on every GPU, each transformer `Block` its own shard unit: trains, writes one full
    checkpoint that loads into LitMAE, and keeps weight decay on the 2-D weights (under FULL_SHARD on
    2+ GPUs the optimizer sees flattened 1-D shards)."""
    devices = torch.cuda.device_count()
    (tmp_path / "fsdp.yaml").write_text(yaml.safe_dump(FSDP_YAML))
    result, = run_all([lit_mae("fit", "--config", str(CONFIGS / "pretrain.yaml"), "--config", "fsdp.yaml",
                               *TINY_ARGS, "--model.init_args.config.depth", "2", *QUIET,
                               "--trainer.accelerator", "gpu", "--trainer.devices", str(devices),
                               "--trainer.precision", "bf16-mixed", "--data.init_args.batch_size", "8",
                               "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "3",
                               "--trainer.limit_val_batches", "2")], tmp_path, timeout=300)
    assert_ok(result)
    checkpoint = tmp_path / "runs" / "pretrain" / "checkpoints" / "last.ckpt"
    system = LitMAE.load_from_checkpoint(checkpoint, map_location="cpu")
    assert system.config.depth == 2
    state = torch.load(checkpoint, weights_only=False, map_location="cpu")
    decay, no_decay = state["optimizer_states"][0]["param_groups"]
    expected = param_groups_weight_decay(system.model, 0.05)
    assert (len(decay["params"]), len(no_decay["params"])) == tuple(len(g["params"]) for g in expected)
