"""Every option is defined once: the CLI, the flows, presets and records derive from it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace

import pytest
import typer
from prefect.utilities.callables import parameter_schema
from typer.testing import CliRunner

from flows.cli import app
from flows.options import resolve, with_options
from flows.train import train as train_flow
from gan.loop import LoopConfig
from gan.metrics import EvalConfig
from gan.trainer import TrainConfig
from shards.options import build, flat, option, options_of
from tasks.jobs import PipelineJob, PrepareJob, ReshardJob, TrainJob
from tasks.presets import PRESETS


def test_option_names_are_unique_across_every_job():
    for kind in (PrepareJob, ReshardJob, TrainJob, PipelineJob):
        names = [opt.name for opt in options_of(kind)]
        assert len(names) == len(set(names))
    seeds = {opt.name: opt.path for opt in options_of(PipelineJob) if "seed" in opt.name}
    assert seeds == {
        "split_seed": ("prepare", "split", "seed"),
        "synthetic_seed": ("prepare", "synthetic", "seed"),
        "seed": ("job", "train", "seed"),
    }


def test_precedence_explicit_over_config_file_over_preset_over_defaults(tmp_path):
    config = tmp_path / "job.yaml"
    config.write_text("preset: cpu\nlr_d: 0.0004\nbatch-size: 48\n")
    job = resolve(TrainJob, {"batch_size": 16, "lr_g": None}, "auto", config)
    assert job.train.batch_size == 16  # explicit
    assert job.train.lr_d == 0.0004  # config file
    assert job.model.ngf == PRESETS["cpu"]["ngf"]  # the file's preset
    assert job.train.lr_g == PRESETS["cpu"]["lr_g"]  # an unset flag leaves the preset's
    assert job.train.beta1 == 0.5  # default


def test_a_config_file_with_an_unknown_key_is_refused(tmp_path):
    config = tmp_path / "job.yaml"
    config.write_text("minutes: 1\nwarp_drive: true\n")
    with pytest.raises(ValueError, match="unknown options: warp_drive"):
        resolve(TrainJob, {}, "cpu", config)


def test_an_explicit_budget_replaces_the_presets():
    job = resolve(TrainJob, {"steps": 7}, "cpu")
    assert (job.steps, job.minutes) == (7, 0.0)
    job = resolve(TrainJob, {"minutes": 5.0}, "cpu")  # 5 minutes, not "or 2,400 steps"
    assert (job.steps, job.minutes) == (0, 5.0)


def test_the_cpu_preset_trains_for_steps_so_every_machine_gets_the_same_model():
    job = resolve(TrainJob, {}, "cpu")
    assert (job.steps, job.minutes, job.epochs) == (PRESETS["cpu"]["steps"], 0.0, 0.0)


def test_rules_between_options_live_in_the_job():
    job = build(TrainJob, {"loss": "wgan-gp", "steps": 1})
    assert (job.train.critic_steps, job.model.d_norm) == (5, "layer")
    assert not hasattr(build(TrainJob, {"steps": 1}).loader, "batch_size")  # one batch size


def test_auto_critic_steps_follow_the_objective_after_a_replace():
    bce = TrainConfig()
    assert bce.critic_steps == 1
    assert replace(bce, loss="wgan-gp").critic_steps == 5  # derived, never stored
    assert replace(bce, loss="wgan-gp", d_steps=2).critic_steps == 2


@dataclass(frozen=True)
class LoopWithWarmup(LoopConfig):
    warmup_steps: int = option(25, "Steps of learning-rate warm-up.")


@dataclass(frozen=True)
class Job:
    loop: LoopWithWarmup = field(default_factory=LoopWithWarmup)


def test_a_new_option_appears_in_cli_help_flow_schema_and_options_json():
    """Adding an option is one field: here a test adds `warmup_steps` to the loop config."""

    def command(**values):
        """A command."""
        return build(Job, {k: v for k, v in values.items() if v is not None})

    def cli(**values):
        """A command."""

    demo = typer.Typer()
    with_options(Job, cli=True)(cli)
    demo.command()(cli)
    help_text = CliRunner().invoke(demo, ["--help"], terminal_width=200).output
    assert "--warmup-steps" in help_text and "learning-rate warm-up" in help_text

    flow_fn = with_options(Job)(command)
    schema = parameter_schema(flow_fn).model_dump()["properties"]
    assert "Steps of learning-rate warm-up" in schema["warmup_steps"]["description"]

    job = flow_fn(warmup_steps=40)
    assert flat(job)["warmup_steps"] == 40
    assert json.loads(json.dumps(flat(job)))["warmup_steps"] == 40


def test_the_flow_schema_has_every_option_with_its_help():
    schema = train_flow.parameters.model_dump()["properties"]
    for opt in options_of(PipelineJob):
        assert opt.name in schema, opt.name
        assert opt.help in schema[opt.name]["description"]
    assert {"preset", "data_root"} <= set(schema)


def test_cli_train_dry_run_prints_the_resolved_job(tmp_path):
    result = CliRunner().invoke(
        app,
        ["--data-root", str(tmp_path), "train", "--preset", "cpu", "--lr-g", "0.001",
         "--no-flip", "--dry-run"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    printed = json.loads(result.output)
    assert printed["train"]["lr_g"] == 0.001 and printed["train"]["flip"] is False
    assert printed["model"]["ngf"] == PRESETS["cpu"]["ngf"]
    assert printed["evaluation"]["samples"] == EvalConfig().samples


def test_cli_refuses_a_bad_value_in_one_line(tmp_path):
    result = CliRunner().invoke(
        app, ["--data-root", str(tmp_path), "train", "--loss", "l2", "--dry-run"]
    )
    assert result.exit_code == 1
    assert "unknown loss 'l2'" in result.output
    assert "Traceback" not in result.output


def test_prepare_options_are_the_flows(tmp_path):
    """msls prepare and the msls-prepare flow take the same option names."""
    from flows.prepare import prepare

    flow_names = set(prepare.parameters.model_dump()["properties"]) - {"data_root"}
    assert flow_names == {opt.name for opt in options_of(PrepareJob)}
