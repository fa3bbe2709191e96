"""EmbeddingWriter (lit_mae/callbacks/predictions.py): what `predict` writes (embeddings, logits,
labels, indices, file paths), and how the ranks' rows merge into one file. The writer on two DDP
processes: test_ddp.py::test_embedding_writer_gathers_one_file_equal_to_one_process."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import seed_everything
from torch.utils.data import Dataset

from conftest import ImageDataModule, tiny_config_values, tiny_lit_mae
from lit_mae import MAEConfig
from lit_mae.callbacks import EmbeddingWriter
from lit_mae.callbacks.predictions import _merge
from lit_mae.datamodules.digits import DigitsDataModule
from lit_mae.systems.classification import LitLinearProbe


def _cls_features(model, images: torch.Tensor) -> torch.Tensor:
    encoder = model.model.encoder
    with torch.no_grad():
        return encoder.pool(encoder.forward_features(images), "cls")


@pytest.mark.parametrize("system", ["mae", "linear_probe"])
def test_embedding_writer_writes_embeddings_logits_labels_indices(make_trainer, tmp_path, system):
    seed_everything(0)
    if system == "mae":
        model = tiny_lit_mae()
    else:
        model = LitLinearProbe(pretrained=None, config=MAEConfig(**tiny_config_values()), num_classes=10)
    datamodule = DigitsDataModule(image_size=16, batch_size=200)  # the 180 test digits in one batch
    path = tmp_path / "out" / "predictions.pt"
    make_trainer(callbacks=[EmbeddingWriter(path)]).predict(model, datamodule=datamodule)

    written = torch.load(path, weights_only=True)  # plain tensors, lists and strings: no pickled code
    test = datamodule.on_after_batch_transfer(next(iter(datamodule.predict_dataloader())), 0)
    images, labels = test.images, test.labels  # the whole predict split, in order
    assert len(labels) == 180
    n, width = len(labels), model.model.encoder.config.embed_dim
    assert written["embeddings"].shape == (n, width)
    assert torch.equal(written["indices"], torch.arange(n))
    assert torch.equal(written["labels"], labels)
    torch.testing.assert_close(written["embeddings"], _cls_features(model, images))
    if system == "mae":
        assert "logits" not in written
    else:
        assert written["logits"].shape == (n, 10)
        with torch.no_grad():  # eval mode: the head's BatchNorm uses its running statistics
            torch.testing.assert_close(written["logits"], model.eval().model.classify(written["embeddings"]))
    assert "paths" not in written


class FileImages(Dataset):
    """Images with file-path `sources`, as `ImageSamples` has, and no labels (-1)."""

    def __init__(self, n: int) -> None:
        self.sources = [f"images/{i:03d}.png" for i in range(n)]
        self.images = torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(1))

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], -1


def test_embedding_writer_writes_paths_and_leaves_out_unlabelled(make_trainer, tmp_path):
    class PredictFiles(ImageDataModule):
        def predict_dataloader(self):
            return self.val_dataloader()

    dataset = FileImages(10)
    path = tmp_path / "predictions.pt"
    model = tiny_lit_mae()
    make_trainer(callbacks=[EmbeddingWriter(path)]).predict(model, datamodule=PredictFiles(dataset=dataset))
    written = torch.load(path, weights_only=True)  # plain tensors, lists and strings: no pickled code
    assert written["paths"] == dataset.sources
    assert "labels" not in written
    torch.testing.assert_close(written["embeddings"], _cls_features(model, dataset.images))


def test_merge_sorts_rows_on_indices_and_drops_repeats():
    shards = [{"embeddings": torch.tensor([[0.0], [2.0], [4.0]]), "indices": torch.tensor([0, 2, 4])},
              {"embeddings": torch.tensor([[1.0], [3.0], [0.5]]), "indices": torch.tensor([1, 3, 0])}]
    merged = _merge(shards)
    assert merged["indices"].tolist() == [0, 1, 2, 3, 4]
    assert merged["embeddings"].flatten().tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]  # the first of index 0
    assert _merge([]) is None
