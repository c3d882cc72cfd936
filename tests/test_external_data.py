"""hub:<name> and files:<path> datasets through the datasets library, on fixtures the tests write."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from fl_dp.config import ConfigError, RunConfig
from fl_dp.data import load_dataset
from fl_dp.external_data import load_external
from fl_dp.inprocess import InProcessFederation
from fl_dp.server import ServerCore


def _table(rows: int = 120, users: int = 6, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, 3))
    return pd.DataFrame({
        "f1": x[:, 0], "f2": x[:, 1], "f3": x[:, 2],
        "kind": np.where(x[:, 0] + x[:, 1] > 0, "yes", "no"),  # a text label: numbered in sorted order
        "user": [f"u{i % users}" for i in range(rows)],
    })


def test_a_csv_file_trains_one_client_per_user_with_natural_id(tmp_path):
    path = tmp_path / "data.csv"
    frame = _table()
    frame.to_csv(path, index=False)
    cfg = RunConfig(dataset=f"files:{path}", model="logreg", label_column="kind", id_column="user", partitioner="natural-id",
                    num_clients=6, clients_per_round=6, num_server_rounds=2, batch_size=0, eval_samples=0, strategy="fedavg")
    data = load_dataset(cfg.dataset, None, 0, "kind", "user")
    assert data.train.input_shape == (3,) and data.train.num_classes == 2 and len(data.train) + len(data.test) == 120
    federation = InProcessFederation(cfg)
    history = federation.run()
    assert list(history["accepted"]) == [6, 6]
    for cid in federation.clients:
        rows = federation.clients[cid].objective.data
        assert len(set(rows.groups.tolist())) == 1  # each client holds one user's rows, and only them


def test_a_parquet_file_and_bad_columns_are_named(tmp_path):
    path = tmp_path / "data.parquet"
    _table().to_parquet(path)
    cfg = RunConfig(dataset=f"files:{path}", model="logreg", label_column="kind", num_clients=4, clients_per_round=4, eval_samples=0)
    ServerCore(cfg)
    with pytest.raises(ConfigError, match="label-column 'label' is not a column"):
        ServerCore(cfg.replace(label_column="label"))
    with pytest.raises(ConfigError, match="the data has 6 ids, num-clients is 4"):
        ServerCore(cfg.replace(id_column="user", partitioner="natural-id"))
    with pytest.raises(ConfigError, match="does not exist"):
        ServerCore(cfg.replace(dataset=f"files:{tmp_path / 'missing.csv'}"))
    with pytest.raises(ConfigError, match="unknown dataset"):
        RunConfig(dataset="files:")


def _damaged(frame: pd.DataFrame, name: str) -> pd.DataFrame | bytes:
    frame = frame.copy()
    if name == "missing label":
        frame.loc[3, "kind"] = None
    elif name == "NaN feature":
        frame.loc[5, "f2"] = np.nan
    elif name == "infinite feature":
        frame.loc[5, "f2"] = np.inf
    elif name == "feature beyond float32":
        frame.loc[5, "f2"] = 1e300
    elif name == "integer label of a trillion classes":
        frame["kind"] = np.arange(len(frame)) % 2
        frame.loc[0, "kind"] = 10**12
    elif name == "ragged row":
        return frame.to_csv(index=False).encode() + b"1,2,3,yes,u1,surplus\n"
    elif name == "not UTF-8":
        return frame.to_csv(index=False).replace("yes", "y\xe9s").encode("latin-1")
    elif name == "empty file":
        return b""
    return frame


@pytest.mark.parametrize("damage, message", [
    ("missing label", "label-column 'kind' .* has rows without a label"),
    ("NaN feature", "feature column 'f2' has 1 empty, NaN, infinite"),
    ("infinite feature", "feature column 'f2' has 1 empty, NaN, infinite"),
    ("feature beyond float32", "out-of-float32"),
    ("integer label of a trillion classes", "integer label 1000000000000: integer labels are classes 0..K-1"),
    ("ragged row", "cannot be read as csv: ParserError"),
    ("not UTF-8", "cannot be read as csv: UnicodeDecodeError"),
    ("empty file", "cannot be read as csv: EmptyDataError"),
])
def test_a_damaged_file_is_refused_before_round_1_with_its_reason(tmp_path, damage, message):
    path = tmp_path / "data.csv"
    damaged = _damaged(_table(), damage)
    if isinstance(damaged, bytes):
        path.write_bytes(damaged)
    else:
        damaged.to_csv(path, index=False)
    cfg = RunConfig(dataset=f"files:{path}", model="logreg", label_column="kind", num_clients=4, clients_per_round=4, eval_samples=0)
    with pytest.raises(ConfigError, match=message):
        ServerCore(cfg)


@pytest.mark.parametrize("labels", [[[1, 2], [3]], [{"x": 1}, {"x": 2}]], ids=["lists", "records"])
def test_a_label_column_of_lists_or_records_is_refused_naming_it(tmp_path, labels):
    path = tmp_path / "data.parquet"
    pd.DataFrame({"f1": [0.5, -0.5] * 4, "kind": labels * 4}).to_parquet(path)
    cfg = RunConfig(dataset=f"files:{path}", model="logreg", label_column="kind", num_clients=2, clients_per_round=2, eval_samples=0)
    with pytest.raises(ConfigError, match="label-column 'kind' of .* holds .*not one number or text a row"):
        ServerCore(cfg)


def test_an_image_folder_becomes_standardised_channel_first_images(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(1)
    for label in ("cat", "dog"):
        (tmp_path / "images" / label).mkdir(parents=True)
        for i in range(10):
            pixels = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "images" / label / f"{i}.png")
    cfg = RunConfig(dataset=f"files:{tmp_path / 'images'}", model="cnn", num_clients=2, clients_per_round=2, num_server_rounds=1,
                    eval_samples=0, strategy="fedavg", batch_size=4)
    data = load_dataset(cfg.dataset)
    assert data.train.input_shape == (3, 16, 16) and data.train.num_classes == 2
    assert abs(float(data.train.x.mean())) < 0.05
    assert InProcessFederation(cfg).run()["accepted"].tolist() == [2]


def test_images_of_mixed_modes_are_read_by_their_colours(tmp_path):
    """Palette, RGBA and grey images beside RGB ones: three channels, a palette's colours (not its
    indices), alpha dropped, grey copied to each channel."""
    from PIL import Image

    colours = np.array([[200, 10, 30], [0, 0, 0], [255, 255, 255], [40, 160, 90]], np.uint8)
    rgb = colours[np.random.default_rng(2).integers(0, 4, (8, 8))]
    base = Image.fromarray(rgb)
    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        base.save(tmp_path / label / "rgb.png")
        base.convert("P", palette=Image.Palette.ADAPTIVE, colors=4).save(tmp_path / label / "palette.png")
        base.convert("RGBA").save(tmp_path / label / "rgba.png")
    (tmp_path / "grey").mkdir()
    Image.fromarray(np.full((8, 8), 51, np.uint8)).save(tmp_path / "grey" / "l.png")
    ((x, y, _), _), classes = load_external(f"files:{tmp_path}", 0, held_out=False)
    assert x.shape == (7, 3, 8, 8) and classes == 3
    expected = torch.from_numpy(rgb.transpose(2, 0, 1) / 255.0 * 2 - 1).float()
    grey = int(torch.nonzero(y == 2)[0])
    assert torch.allclose(x[grey], torch.full((3, 8, 8), 51 / 255 * 2 - 1), atol=1e-6)
    for row in [i for i in range(7) if i != grey]:
        assert torch.allclose(x[row], expected, atol=1e-6)


def test_sixteen_bit_grey_images_span_the_same_range_as_eight_bit(tmp_path):
    from PIL import Image

    for label, value in (("dark", 0), ("light", 65535)):
        (tmp_path / label).mkdir()
        Image.fromarray(np.full((4, 4), value, np.uint16)).save(tmp_path / label / "0.png")
        Image.fromarray(np.full((4, 4), value // 257, np.uint8)).save(tmp_path / label / "1.png")
    ((x, y, _), _), _ = load_external(f"files:{tmp_path}", 0, held_out=False)
    assert x.shape == (4, 1, 4, 4)
    for row, label in enumerate(y.tolist()):
        assert torch.allclose(x[row], torch.full((1, 4, 4), -1.0 if label == 0 else 1.0), atol=1e-6)


def test_float_images_are_refused_for_their_unknown_range(tmp_path):
    from PIL import Image

    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        Image.fromarray(np.full((4, 4), 0.5, np.float32)).save(tmp_path / label / "0.tiff")
    with pytest.raises(ValueError, match="32-bit float images have no fixed pixel range"):
        load_external(f"files:{tmp_path}", 0, held_out=False)


def test_a_hub_dataset_is_read_through_the_datasets_library(monkeypatch):
    import datasets
    from PIL import Image

    images = [Image.fromarray(np.full((8, 8), 40 * i, np.uint8)) for i in range(6)]
    split = datasets.Dataset.from_dict({"img": images, "label": [0, 1, 2, 0, 1, 2]}).cast_column("img", datasets.Image())
    monkeypatch.setattr(datasets, "load_dataset", lambda name: datasets.DatasetDict({"train": split, "test": split}))
    data = load_dataset("hub:someone/tiny-grey", None, 0)
    assert data.train.input_shape == (1, 8, 8) and data.train.num_classes == 3 and len(data.test) == 6


def test_a_row_without_an_image_is_refused(monkeypatch):
    import datasets
    from PIL import Image

    images = [Image.fromarray(np.zeros((4, 4), np.uint8)), None]
    split = datasets.Dataset.from_dict({"img": images, "label": [0, 1]}).cast_column("img", datasets.Image())
    monkeypatch.setattr(datasets, "load_dataset", lambda name: datasets.DatasetDict({"train": split, "test": split}))
    with pytest.raises(ValueError, match="column 'img' of 'hub:someone/holes' has rows without an image"):
        load_external("hub:someone/holes", 0)


def test_a_hub_dataset_without_network_is_refused_before_round_1(monkeypatch):
    import datasets
    import huggingface_hub

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(ConfigError, match="dataset 'hub:nobody/no-such-set' cannot be loaded.*needs the network"):
        ServerCore(RunConfig(dataset="hub:nobody/no-such-set", model="logreg", num_clients=2, clients_per_round=2))
