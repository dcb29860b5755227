"""Scale-out paths: the shard step on a local Dask cluster, and publishing to fsspec URLs."""

from __future__ import annotations

import fsspec
import pyarrow.parquet as pq
import pytest
from prefect.task_runners import ThreadPoolTaskRunner

from flows.prepare import prepare, shard_runner
from shards.dataset import resolve_version
from shards.layout import DataLayout
from shards.publish import publish_version
from shards.verify import verify_dataset
from tests.tiny import build_dataset

SMALL = {"synthetic_images": 120, "synthetic_cities": 3, "shard_size": 10}


@pytest.mark.slow
def test_a_local_dask_cluster_builds_the_same_version_as_threads(prefect_api, tmp_path, caplog):
    threads = prepare(data_root=str(tmp_path / "threads"), **SMALL)
    assert "LocalCluster" not in caplog.text
    dask = prepare(data_root=str(tmp_path / "dask"), dask="local", **SMALL)
    assert "Creating a new Dask cluster with `distributed.deploy.local.LocalCluster`" in caplog.text
    assert dask["version"] == threads["version"] and dask["built"]
    manifests = [pq.read_table(f"{r['path']}/manifest.parquet") for r in (threads, dask)]
    assert manifests[0].equals(manifests[1])
    assert verify_dataset(DataLayout.at(tmp_path / "dask").dataset(dask["version"])).ok


def test_the_shard_runner_follows_the_dask_parameter():
    from prefect_dask import DaskTaskRunner

    assert isinstance(shard_runner(""), ThreadPoolTaskRunner)
    assert isinstance(shard_runner("local"), DaskTaskRunner)
    assert shard_runner("tcp://10.0.0.5:8786").address == "tcp://10.0.0.5:8786"


@pytest.fixture(scope="module")
def version_dir(tmp_path_factory):
    layout = DataLayout.at(build_dataset(tmp_path_factory.mktemp("publish")))
    return layout.dataset(resolve_version(layout))


def test_publish_to_a_local_url_gives_a_version_that_verifies(version_dir, tmp_path):
    url = publish_version(version_dir, f"file://{tmp_path}/bucket")
    assert url == f"file://{tmp_path}/bucket/{version_dir.name}"
    copy = tmp_path / "bucket" / version_dir.name
    assert verify_dataset(copy, workers=1).ok
    assert (tmp_path / "bucket" / "LATEST").read_text() == f"{version_dir.name}\n"
    before = {p: p.stat().st_mtime_ns for p in copy.rglob("*")}
    publish_version(version_dir, f"file://{tmp_path}/bucket")  # published: nothing re-sent
    assert before == {p: p.stat().st_mtime_ns for p in copy.rglob("*")}


def test_publish_uploads_every_file_with_dataset_json_last(version_dir):
    publish_version(version_dir, "memory://bucket/msls")
    fs = fsspec.filesystem("memory")
    target = f"/bucket/msls/{version_dir.name}"
    local = {
        p.relative_to(version_dir).as_posix(): p for p in version_dir.rglob("*") if p.is_file()
    }
    remote = {path.removeprefix(f"{target}/") for path in fs.find(target)}
    assert remote == set(local)
    for name, path in local.items():
        assert fs.cat_file(f"{target}/{name}") == path.read_bytes()
    created = {name: fs.info(f"{target}/{name}")["created"] for name in local}
    assert created["dataset.json"] >= max(created.values())
    assert fs.info("/bucket/msls/LATEST")["created"] >= created["dataset.json"]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"dask": "banana"}, "dask must be '', 'local' or a scheduler address"),
        ({"publish": "nosuch://bucket"}, "unknown fsspec protocol 'nosuch'"),
    ],
)
def test_bad_scale_out_parameters_fail_before_any_work(tmp_path, params, message):
    with pytest.raises(ValueError, match=message):
        prepare.fn(data_root=str(tmp_path), **params)
    assert not any(tmp_path.iterdir())
