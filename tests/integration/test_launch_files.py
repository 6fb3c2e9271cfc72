"""launch/: the example files parse with the launchers' own parsers, the README commands are valid launcher
command lines naming files that exist, and real 2-process CPU launches (torchrun, deepspeed, accelerate,
the sbatch script under a stand-in srun) deliver rank / world size to reidscale.utils.dist."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.processes import run_command

pytestmark = pytest.mark.deepspeed

REPO = Path(__file__).resolve().parents[2]
LAUNCH = REPO / "launch"
README = LAUNCH / "README.md"
SBATCH = LAUNCH / "slurm_multinode.sbatch"
VENV_BIN = Path(sys.executable).parent
LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "OMP_NUM_THREADS")

# The CPU smoke commands, as the README documents them (the tests add a free port to each).
TORCHRUN_SMOKE = "torchrun --standalone --nproc_per_node 2 launch/check_world.py"
DEEPSPEED_SMOKE = "deepspeed --num_gpus 2 --no_local_rank launch/check_world.py"
ACCELERATE_SMOKE = "accelerate launch --config_file launch/accelerate_cpu.yaml launch/check_world.py"


def readme_commands() -> list[list[str]]:
    """Every command line of the README's ```bash blocks, continuation lines joined, comments dropped."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.DOTALL)
    commands = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            tokens = shlex.split(line, comments=True)
            if tokens:
                commands.append(tokens)
    return commands


def launch_env(**extra: str) -> dict[str, str]:
    """The test's environment without any launcher / SLURM variables, the venv first on PATH."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS and not k.startswith("SLURM_")}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(REPO)
    env["OMP_NUM_THREADS"] = "1"
    env.update(extra)
    return env


def run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run a launcher in its own process group and wait for it (and its ranks) to exit."""
    return run_command(argv, env=env, cwd=REPO)


def world_reports(stdout: str) -> list[dict]:
    """check_world.py's JSON objects (ranks may interleave them on one line), ordered by rank."""
    return sorted(
        (json.loads(m) for m in re.findall(r"\{[^{}]*\"rank_sum\"[^{}]*\}", stdout)), key=lambda r: r["rank"]
    )


def assert_two_ranks(result: subprocess.CompletedProcess, local_ranks: tuple[int, int] = (0, 1)) -> None:
    """Exit 0 and one report per rank 0, 1 that agrees with the environment and all-reduced 0 + 1."""
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    reports = world_reports(result.stdout)
    assert [r["rank"] for r in reports] == [0, 1], result.stdout
    assert tuple(r["local_rank"] for r in reports) == local_ranks
    for report in reports:
        assert report["env_rank"] == report["rank"]
        assert report["world_size"] == report["env_world_size"] == 2
        assert report["rank_sum"] == 1 and report["ok"] is True and report["backend"] == "gloo"


# ---- the files parse ------------------------------------------------------------------------------------


def test_sbatch_script_passes_bash_syntax_check() -> None:
    result = subprocess.run(["bash", "-n", str(SBATCH)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_hostfile_parses_with_deepspeeds_own_parser() -> None:
    from deepspeed.launcher.runner import fetch_hostfile

    pool = fetch_hostfile(str(LAUNCH / "hostfile"))
    assert pool == {"node-01": 8, "node-02": 8, "node-03": 8, "node-04": 8}


def test_accelerate_configs_load_with_accelerates_loader() -> None:
    from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
    from accelerate.utils import DistributedType

    multi = load_config_from_file(str(LAUNCH / "accelerate_multinode.yaml"))
    assert isinstance(multi, ClusterConfig)
    assert (multi.num_machines, multi.num_processes) == (2, 16)
    assert multi.distributed_type == DistributedType.MULTI_GPU
    assert multi.mixed_precision == "no" and not multi.use_cpu
    cpu = load_config_from_file(str(LAUNCH / "accelerate_cpu.yaml"))
    assert (cpu.num_machines, cpu.num_processes, cpu.use_cpu) == (1, 2, False)
    assert cpu.distributed_type == DistributedType.MULTI_GPU, "with use_cpu accelerate starts one process"


# ---- the README's commands --------------------------------------------------------------------------------


def parse_launcher_command(tokens: list[str]) -> object:
    """Parse one README command with its launcher's own argument parser (SystemExit on a bad command)."""
    program, args = tokens[0], tokens[1:]
    if program == "deepspeed":
        from deepspeed.launcher.runner import parse_args

        return parse_args(args)
    if program == "torchrun":
        from torch.distributed.run import get_args_parser

        return get_args_parser().parse_args(args)
    if program == "accelerate" and args[:1] == ["launch"]:
        from accelerate.commands.launch import launch_command_parser

        return launch_command_parser().parse_args(args[1:])
    if program == "sbatch":
        return args
    raise AssertionError(f"README command with an unknown launcher: {shlex.join(tokens)}")


def test_readme_commands_parse_with_their_launchers_and_run_reidscale_or_check_world() -> None:
    commands = readme_commands()
    assert {tokens[0] for tokens in commands} == {"torchrun", "deepspeed", "accelerate", "sbatch", "python"}
    for tokens in commands:
        line = shlex.join(tokens)
        if tokens[0] == "python":  # the DeepSpeed JSON renderer, not a launcher
            assert tokens[1] == "launch/render_deepspeed_configs.py", line
            continue
        parsed = parse_launcher_command(tokens)
        if tokens[0] == "sbatch":
            assert tokens[1] == "launch/slurm_multinode.sbatch", line
            continue
        program = (parsed.user_script, parsed.user_args) if tokens[0] == "deepspeed" else None
        if program is None:
            program = (parsed.training_script, parsed.training_script_args)
        if parsed.module:
            assert program == ("reidscale", ["finetune", "--config", "configs/finetune.yaml"]), line
        else:
            assert program[0] == "launch/check_world.py", line
        if tokens[0] == "deepspeed":
            assert parsed.no_local_rank, f"deepspeed would append --local_rank=N to the program: {line}"


def test_every_launch_path_in_the_readme_exists_and_every_example_is_used() -> None:
    named = {tok for tokens in readme_commands() for tok in tokens if tok.startswith("launch/")}
    missing = sorted(p for p in named if not (REPO / p).is_file())
    assert not missing, f"README commands name files that do not exist: {missing}"
    rendered = {f"launch/ds_zero{stage}.json" for stage in range(4)}  # the renderer's output, tested below
    examples = {f"launch/{p.name}" for p in LAUNCH.iterdir() if p.is_file() and p.name != "README.md"}
    assert examples - named - rendered == set(), "example files no README command uses"


def test_readme_documents_the_smoke_commands_tested_here() -> None:
    text = README.read_text(encoding="utf-8")
    for command in (TORCHRUN_SMOKE, DEEPSPEED_SMOKE, ACCELERATE_SMOKE):
        assert command in text


def test_hostfile_covers_the_readme_deepspeed_command() -> None:
    from deepspeed.launcher.runner import fetch_hostfile, parse_args

    pool = fetch_hostfile(str(LAUNCH / "hostfile"))
    for tokens in readme_commands():
        if tokens[0] == "deepspeed" and "--hostfile" in tokens:
            args = parse_args(tokens[1:])
            assert args.hostfile == "launch/hostfile"
            assert args.num_nodes <= len(pool) and args.num_gpus <= min(pool.values())


# ---- real 2-process CPU launches -------------------------------------------------------------------------


def with_port(command: str, flag: str, after: int, port: int) -> list[str]:
    tokens = shlex.split(command)
    return [*tokens[:after], flag, str(port), *tokens[after:]]


@pytest.mark.multiproc
def test_torchrun_standalone_two_processes() -> None:
    assert_two_ranks(run(shlex.split(TORCHRUN_SMOKE), launch_env()))


@pytest.mark.multiproc
def test_deepspeed_launcher_two_cpu_processes(free_port: int) -> None:
    assert_two_ranks(run(with_port(DEEPSPEED_SMOKE, "--master_port", 1, free_port), launch_env()))


@pytest.mark.multiproc
def test_accelerate_launch_two_cpu_processes(free_port: int) -> None:
    assert_two_ranks(run(with_port(ACCELERATE_SMOKE, "--main_process_port", 2, free_port), launch_env()))


@pytest.mark.slow
@pytest.mark.multiproc
def test_torchrun_multinode_rendezvous_with_two_agents(free_port: int) -> None:
    """The README's multi-node form: two torchrun agents (two 'nodes' on localhost) meet at one endpoint."""
    endpoint = f"127.0.0.1:{free_port}"
    argv = ["torchrun", "--nnodes", "2", "--nproc_per_node", "1", "--rdzv_backend", "c10d"]
    argv += ["--rdzv_endpoint", endpoint, "--rdzv_id", "test-rdzv", "launch/check_world.py"]
    two_agents = ["bash", "-c", 'set -e; "$@" & first=$!; "$@"; wait "$first"', "two_agents", *argv]
    result = run(two_agents, launch_env())
    assert_two_ranks(result, local_ranks=(0, 0))  # one process per 'node'


# ---- the sbatch script, under stand-in srun / scontrol --------------------------------------------------

FAKE_SCONTROL = """#!/bin/bash
[ "$1 $2" = "show hostnames" ] && [ "$3" = "$SLURM_JOB_NODELIST" ] && printf 'localhost\\nnode-b\\n'
"""

# Records what the script exported and ran, then (FAKE_SRUN_RUN=1) starts SLURM_NTASKS copies of the command
# with SLURM_PROCID / SLURM_LOCALID set, as srun does on one node.
FAKE_SRUN = """#!/bin/bash
while [[ "$1" == -* ]]; do shift; done
echo "$MASTER_ADDR $MASTER_PORT $OMP_NUM_THREADS $NCCL_DEBUG | $*" > "$FAKE_SRUN_RECORD"
[ "$FAKE_SRUN_RUN" = 1 ] || exit 0
pids=()
for ((i = 0; i < SLURM_NTASKS; i++)); do SLURM_PROCID=$i SLURM_LOCALID=$i "$@" & pids+=($!); done
rc=0; for pid in "${pids[@]}"; do wait "$pid" || rc=1; done; exit $rc
"""


def fake_slurm_env(tmp_path: Path, run_tasks: bool, **extra: str) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("scontrol", FAKE_SCONTROL), ("srun", FAKE_SRUN)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = launch_env(SLURM_JOB_NODELIST="localhost,node-b", SLURM_NTASKS="2", SLURM_JOB_ID="12345")
    env.update(SLURM_CPUS_PER_TASK="3", PYTHON=sys.executable, FAKE_SRUN_RECORD=str(tmp_path / "srun.txt"))
    env.update(FAKE_SRUN_RUN="1" if run_tasks else "0", **extra)
    env.pop("OMP_NUM_THREADS")
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    return env


def test_sbatch_exports_master_from_scontrol_and_runs_srun(tmp_path: Path) -> None:
    env = fake_slurm_env(tmp_path, run_tasks=False)
    result = run(["bash", str(SBATCH), "-m", "reidscale", "finetune", "--config", "c.yaml"], env)
    assert result.returncode == 0, result.stderr
    # first host of the node list; port 20000 + 12345 % 20000; threads = SLURM_CPUS_PER_TASK
    expected = f"localhost 32345 3 WARN | {sys.executable} -u -m reidscale finetune --config c.yaml"
    assert (tmp_path / "srun.txt").read_text().strip() == expected


def test_sbatch_without_arguments_prints_usage(tmp_path: Path) -> None:
    result = run(["bash", str(SBATCH)], fake_slurm_env(tmp_path, run_tasks=False))
    assert result.returncode == 2 and "usage: sbatch" in result.stderr


@pytest.mark.multiproc
def test_sbatch_two_tasks_reach_reidscale_through_slurm_variables(tmp_path: Path, free_port: int) -> None:
    env = fake_slurm_env(tmp_path, run_tasks=True, MASTER_PORT=str(free_port))
    result = run(["bash", str(SBATCH), "launch/check_world.py"], env)
    assert_two_ranks(result)  # RANK / WORLD_SIZE unset: ranks came from SLURM_PROCID / SLURM_NTASKS


def test_rendered_deepspeed_examples_are_current(tmp_path: Path) -> None:
    import json

    sys.path.insert(0, str(LAUNCH))
    try:
        from render_deepspeed_configs import render
    finally:
        sys.path.remove(str(LAUNCH))
    fresh = render(LAUNCH.parent / "configs" / "finetune.yaml", 16, tmp_path)
    for path in fresh:
        committed = json.loads((LAUNCH / path.name).read_text())
        assert committed == json.loads(path.read_text()), f"launch/{path.name} is stale: rerun the script"
        assert committed["train_batch_size"] == 64 and committed["train_micro_batch_size_per_gpu"] == 4
