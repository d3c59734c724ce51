"""Tiny pretrained models and SpeakGer-style data for the fine-tuning tests.

The hub is unreachable in CI, so the tests build what a download would give them: a
byte-level BPE tokenizer trained with the `tokenizers` library on German parliamentary
text, and randomly initialised Qwen2 and Gemma3 causal LMs of about a hundred thousand
parameters around it, both saved with save_pretrained into a folder that
`train.hf_model.model_name` points at. Speech data is a synthetic SpeakGer speeches CSV
next to slices of the real member tables from the shared folder.

Everything is written under a folder the caller passes in (a tmp_path), never into the
source tree.
"""

from __future__ import annotations

import csv
import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, cast

import numpy as np

from ml_playground import run_folder
from tests.conftest import SHARED_DIR

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerFast

    from ml_playground.export.chat_template import TemplateTokenizer
    from ml_playground.run_folder import Slot

SPEAKGER_DIR = SHARED_DIR / "data" / "speakger"
ADAPTER_FILE = "adapter_model.safetensors"
Family = Literal["qwen2", "gemma3"]

SENTENCES = (
    "Frau Präsidentin! Meine sehr geehrten Damen und Herren!",
    "Wir beraten heute den Haushalt für das kommende Jahr.",
    "Die Bundesregierung muss endlich handeln, und zwar jetzt.",
    "Das ist eine Frage der Gerechtigkeit für alle Bürgerinnen und Bürger.",
    "Ich danke Ihnen für Ihre Aufmerksamkeit.",
    "Herr Kollege, Sie haben das Wort.",
    "Wir stimmen dem Antrag zu, weil er richtig ist.",
    "Sprecher: Partei: Thema: Jahr:",
)

# Real members of the 19th Bundestag, as they appear in the shared SpeakGer tables.
MEMBERS: Mapping[str, str] = {"19398": "cdu", "19707": "linke/pds/sed", "19272": "fdp"}
HIDDEN = 64  # with a 400-token vocabulary: about 100k parameters
SPEECH_HEADER = ("Period", "Session", "Chair", "Interjection", "Speech", "MPID", "Party", "Date")


@dataclass(frozen=True)
class TinyModels:
    """Folders holding tiny pretrained models, as `model_name` would name them."""

    qwen2: Path
    gemma3: Path

    def of(self, family: Family) -> Path:
        return self.qwen2 if family == "qwen2" else self.gemma3


def build_tiny_models(folder: Path) -> TinyModels:
    return TinyModels(
        qwen2=build_tiny_model(folder / "tiny-qwen2", "qwen2"),
        gemma3=build_tiny_model(folder / "tiny-gemma3", "gemma3"),
    )


@dataclass(frozen=True)
class SpecialIds:
    bos: int | None
    eos: int
    pad: int


def build_tokenizer(family: Family) -> tuple[PreTrainedTokenizerFast, SpecialIds]:
    """A byte-level BPE tokenizer with the special tokens of the family it stands in for."""
    from tokenizers import (  # noqa: PLC0415 - heavy, and only model-building tests need it
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast  # noqa: PLC0415 - as above

    gemma = family == "gemma3"
    bos, eos, pad = ("<bos>", "<eos>", "<pad>") if gemma else (None, "<|endoftext|>", "<|pad|>")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)  # pyright: ignore[reportAttributeAccessIssue] - the stubs lack the setter
    tokenizer.decoder = decoders.ByteLevel()  # pyright: ignore[reportAttributeAccessIssue] - as above
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=[token for token in (bos, eos, pad) if token is not None],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(SENTENCES * 4, trainer)

    def id_of(token: str) -> int:
        token_id = tokenizer.token_to_id(token)
        assert token_id is not None
        return token_id

    ids = SpecialIds(bos=id_of(bos) if bos else None, eos=id_of(eos), pad=id_of(pad))
    if bos is not None:
        # Gemma's tokenizer starts every text with <bos>; the stand-in does the same.
        tokenizer.post_processor = processors.TemplateProcessing(  # pyright: ignore[reportAttributeAccessIssue] - as above
            single=f"{bos} $A", special_tokens=[(bos, id_of(bos))]
        )
    fast = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]  # untyped library
        tokenizer_object=tokenizer, bos_token=bos, eos_token=eos, pad_token=pad
    )
    return fast, ids


def build_tiny_model(folder: Path, family: Family) -> Path:
    """Save a random tiny `family` model and its tokenizer into `folder`; returns it."""
    import torch  # noqa: PLC0415 - heavy, and only model-building tests need it
    from transformers import (  # noqa: PLC0415 - as above
        AutoModelForCausalLM,
        Gemma3TextConfig,
        PretrainedConfig,
        PreTrainedModel,
        Qwen2Config,
    )

    tokenizer, ids = build_tokenizer(family)
    config: PretrainedConfig
    if family == "gemma3":
        config = Gemma3TextConfig(
            vocab_size=len(tokenizer),
            head_dim=16,
            sliding_window=32,
            bos_token_id=ids.bos,
            eos_token_id=ids.eos,
            pad_token_id=ids.pad,
            hidden_size=HIDDEN,
            intermediate_size=2 * HIDDEN,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
        )
    else:
        config = Qwen2Config(
            vocab_size=len(tokenizer),
            tie_word_embeddings=True,
            eos_token_id=ids.eos,
            pad_token_id=ids.pad,
            hidden_size=HIDDEN,
            intermediate_size=2 * HIDDEN,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
        )
    torch.default_generator.manual_seed(0)
    built = AutoModelForCausalLM.from_config(config)  # type: ignore[no-untyped-call]  # pyright: ignore[reportUnknownMemberType] - untyped library
    model = cast(PreTrainedModel, built)
    model.save_pretrained(folder)  # pyright: ignore[reportUnknownMemberType] - untyped library
    tokenizer.save_pretrained(folder)  # pyright: ignore[reportUnknownMemberType] - untyped library
    return folder


# --- SpeakGer-style data -----------------------------------------------------------------


@dataclass(frozen=True)
class SpeechRow:
    text: str
    mpid: str = ""
    party: str = ""
    date: str = "2019-03-14"
    period: str = "19"
    chair: str = "False"
    interjection: str = "False"

    def cells(self, session: int) -> list[str]:
        return [
            self.period,
            str(session),
            self.chair,
            self.interjection,
            self.text,
            self.mpid,
            self.party,
            self.date,
        ]


def speeches(count: int) -> list[SpeechRow]:
    """`count` ordinary speeches by the MEMBERS, without a party column value."""
    mpids = itertools.cycle(MEMBERS)
    return [
        SpeechRow(text=f"{SENTENCES[i % 7]} {SENTENCES[(i + 3) % 7]}", mpid=next(mpids))
        for i in range(count)
    ]


def write_speeches_csv(
    path: Path, rows: Iterable[SpeechRow], *, extra_lines: Sequence[str] = ()
) -> Path:
    """A SpeakGer speeches table; `extra_lines` are appended raw (to plant damage)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(SPEECH_HEADER)
        for session, row in enumerate(rows, start=1):
            writer.writerow(row.cells(session))
        for line in extra_lines:
            handle.write(line + "\r\n")
    return path


def copy_member_slices(folder: Path, mpids: Iterable[str] = MEMBERS) -> None:
    """The real member tables, reduced to the header and the rows of `mpids`."""
    wanted = set(mpids)
    for name, delimiter in (("all_mps_meta.csv", ";"), ("all_mps_mapping.csv", ",")):
        lines = (SPEAKGER_DIR / name).read_text(encoding="utf-8").splitlines()
        kept = [lines[0]] + [line for line in lines[1:] if line.split(delimiter, 1)[0] in wanted]
        (folder / name).write_text("\n".join(kept) + "\n", encoding="utf-8")


def member_name(mpid: str) -> str:
    """The Name column of `mpid` in the real all_mps_meta.csv."""
    with (SPEAKGER_DIR / "all_mps_meta.csv").open(encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle, delimiter=";"):
            if row["MPID"] == mpid:
                return row["Name"]
    raise KeyError(mpid)


def adapter_weights(out_dir: Path, name: Slot) -> dict[str, torch.Tensor]:
    """The tensors of out_dir/adapters/<name>, by their saved names."""
    from safetensors.torch import load_file  # noqa: PLC0415 # pyright: ignore[reportUnknownVariableType] - PathLike[Unknown] in its signature

    return load_file(run_folder.adapters_dir(out_dir, name) / ADAPTER_FILE)


# --- chat models -------------------------------------------------------------------------------

# Chat templates in the shapes of the real ones, small enough to read. Qwen2's frames every
# turn in <|im_start|>role ... <|im_end|> and opens with a default system turn; Gemma's
# starts with <bos>, calls the assistant "model", folds a system message into the first
# user turn and refuses roles that do not alternate.
QWEN2_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if loop.first and message['role'] != 'system' %}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
# Qwen2's shape with the assistant's part marked for transformers' assistant mask.
QWEN2_GENERATION_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}{% generation %}"
    "{{- message['content'] + '<|im_end|>' }}{% endgeneration %}{{- '\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
GEMMA_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}"
    "{%- set first_user_prefix = '' -%}{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant') }}"
    "{%- endif -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else '') }}"
    "{{ message['content'] | trim + '<end_of_turn>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\\n' }}{%- endif -%}"
)
TURN_TOKENS: Mapping[Family, tuple[str, str]] = {
    "qwen2": ("<|im_start|>", "<|im_end|>"),
    "gemma3": ("<start_of_turn>", "<end_of_turn>"),
}


def build_chat_model(
    folder: Path, tiny_models: TinyModels, family: Family, template: str | None
) -> Path:
    """A copy of the tiny `family` model whose tokenizer has the family's turn tokens (as
    special tokens, like the real ones) and `template` as its chat template (None: none)."""
    import shutil  # noqa: PLC0415 - only chat tests copy models

    shutil.copytree(tiny_models.of(family), folder)
    return add_chat_turns(folder, TURN_TOKENS[family], template)


def add_chat_turns(folder: Path, turn_tokens: Sequence[str], template: str | None) -> Path:
    """Make the saved model in `folder` a chat model, in place: `turn_tokens` added to its
    tokenizer as special tokens, with embedding rows of their own, and `template` as its
    chat template (None: none); returns `folder`."""
    import torch  # noqa: PLC0415 - heavy, and only chat tests need it

    from ml_playground.data.rendering import ChatTokenizer  # noqa: PLC0415 - heavy
    from ml_playground.finetune.hub import (  # noqa: PLC0415 - heavy
        ModelSource,
        load_causal_lm,
        load_tokenizer,
    )
    from ml_playground.finetune.model import fit_embeddings  # noqa: PLC0415 - as above

    tokenizer = cast(ChatTokenizer, load_tokenizer(ModelSource.local(folder)))
    tokenizer.add_special_tokens({"additional_special_tokens": list(turn_tokens)})
    tokenizer.chat_template = template
    tokenizer.save_pretrained(str(folder))
    # The real models have rows for their turn tokens; so does the stand-in.
    model = load_causal_lm(
        ModelSource.local(folder), dtype=torch.float32, attn_implementation="eager"
    )
    torch.default_generator.manual_seed(0)
    fit_embeddings(model, len(tokenizer), init_new_rows=True)
    model.save_pretrained(folder)  # pyright: ignore[reportUnknownMemberType] - untyped library
    return folder


def write_jsonl(path: Path, records: Iterable[object], *, extra_lines: Sequence[str] = ()) -> Path:
    """One JSON object per line; `extra_lines` are appended raw (to plant damage)."""
    import json  # noqa: PLC0415 - only chat tests write jsonl

    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(record, ensure_ascii=False) for record in records]
    path.write_text("\n".join([*lines, *extra_lines]) + "\n", encoding="utf-8")
    return path


def conversation(question: str, answer: str, *, system: str | None = None) -> dict[str, object]:
    messages = [{"role": "system", "content": system}] if system else []
    messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return {"messages": messages}


# --- the released models' chat templates -------------------------------------------------------

# Qwen2.5-Instruct's chat template (tool calls included), as its tokenizer_config.json holds
# it: ChatML turns, and a default system turn when the conversation has no system message.
QWEN25_TEMPLATE = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\n<tool_call>\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""  # noqa: E501 - the released template, line for line

# Gemma 3's chat template: <bos> first, the assistant called "model", a system message
# folded into the first user turn, every content trimmed, roles that must alternate.
GEMMA3_TEMPLATE = r"""{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '

' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '

' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '
' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>
' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model
'}}
{%- endif -%}
"""


def chat_tokenizer(family: Family, template: str) -> TemplateTokenizer:
    """The tiny `family` tokenizer with its turn tokens and `template`, as build_chat_model
    gives it, without a model."""
    tokenizer, _ = build_tokenizer(family)
    tokenizer.add_special_tokens({"additional_special_tokens": list(TURN_TOKENS[family])})
    tokenizer.chat_template = template
    return cast("TemplateTokenizer", tokenizer)


CHAT_TEMPLATES: Mapping[Family, str] = {"qwen2": QWEN2_TEMPLATE, "gemma3": GEMMA_TEMPLATE}


def prepared_split(dataset_dir: Path, split: str) -> tuple[list[int], list[int] | None]:
    """A prepared records dataset's `split` as training reads it: its token ids, and its
    target flags when the dataset has a mask."""
    from ml_playground.data.dataset_meta import read_meta  # noqa: PLC0415 - heavy

    meta = read_meta(dataset_dir / "meta.json")
    ids = np.fromfile(dataset_dir / f"{split}.bin", dtype=meta.dtype).tolist()
    if not meta.masked:
        return ids, None
    return ids, np.fromfile(dataset_dir / f"{split}.mask.bin", dtype=np.uint8).tolist()


def cut_after(ids: Sequence[int], closing: Sequence[int]) -> list[list[int]]:
    """`ids` cut into the records that each end with the run `closing`."""
    records: list[list[int]] = []
    start, width = 0, len(closing)
    for end in range(width, len(ids) + 1):
        if end - width >= start and list(ids[end - width : end]) == list(closing):
            records.append(list(ids[start:end]))
            start = end
    assert start == len(ids), "the stream does not end with the closing run"
    return records
