"""End-to-end Lightning pretraining throughput: configs/cifar10/pretrain.yaml (ViT-S/4 at 32 px,
bf16-mixed, batch 256) fed by SyntheticDataModule through the pretraining pipeline (uint8 crops,
normalised on the device), 150 steps; prints the steady-state step time (median after 30 steps).

    python benchmarks/lightning_step.py 8          # 8 loader workers; extra args go to the CLI
"""
import sys
import time

import lightning as L
import torch

class StepTimer(L.Callback):
    def __init__(self, skip=30):
        self.skip, self.times = skip, []
    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.times.append(time.perf_counter())

workers = sys.argv[1] if len(sys.argv) > 1 else "8"
timer = StepTimer()
args = ["--config", "configs/cifar10/pretrain.yaml",
        "--data", "lit_mae.datamodules.SyntheticDataModule", "--data.init_args.num_samples", "60000",
        "--data.init_args.val_samples", "0", "--data.init_args.test_samples", "0",
        "--data.init_args.image_size", "32", "--data.init_args.augment", "pretrain",
        "--data.init_args.batch_size", "256", "--data.init_args.num_workers", workers,
        "--data.init_args.persistent_workers", "true", "--data.init_args.pin_memory", "true",
        "--trainer.max_steps", "150", "--trainer.limit_val_batches", "0", "--trainer.logger", "false",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_checkpointing", "false",
        "--trainer.callbacks", "[]"]
from lit_mae.cli.lightning_cli import LitMAECLI, LitMAEArgumentParser
from lightning.pytorch import LightningModule, LightningDataModule
cli = LitMAECLI(LightningModule, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                parser_class=LitMAEArgumentParser, args=args + sys.argv[2:], run=False, save_config_callback=None)
cli.trainer.callbacks.append(timer)
start = time.perf_counter()
cli.trainer.fit(cli.model, cli.datamodule)
steps = torch.tensor(timer.times[timer.skip:]).diff()
print(f"workers {workers}: {len(timer.times)} steps; steady median step {steps.median() * 1e3:.1f} ms "
      f"({256 / steps.median():.0f} images/s), mean {steps.mean() * 1e3:.1f} ms; fit wall {time.perf_counter() - start:.1f} s; "
      f"peak {torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0:.2f} GiB; loss {cli.trainer.callback_metrics.get('train/loss')}")
