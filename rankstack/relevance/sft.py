"""TaoSR1 stage 1: CoT supervised fine-tuning over TRL's `SFTTrainer` (relevance.md §3.1, §7, §8).

The loss is causal-LM cross-entropy on the completion only (TRL's prompt/completion format with
`completion_only_loss=True`): the label, then the five-section rationale rendered from the gold steps
(`data.render_completion`). `variant` switches to the ablations `label_only` and `think_first`.

The policy is either a local pretrained checkpoint (`model.path`, e.g. the converted SmolLM2-135M of §8) or a
causal LM built from a config (Llama or Qwen2 shaped; random init) with a tokenizer trained on the train split
(`tokenizer.py`). `train_sft` writes a run folder:

    <out>/model/            the checkpoint: model (safetensors) + tokenizer + relevance.json (variant, prompt
                            settings, label token ids), loadable by `load_checkpoint` and by later stages
    <out>/config.yaml       the resolved stage config
    <out>/train_log.jsonl   TRL's log history (loss, lr, grad norm, token accuracy, …)
    <out>/metrics.json      completion loss and label metrics on a train subset and on the eval split,
                            before and after training, and the largest parameter change
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach the hub: every model and tokenizer here is local

import torch  # noqa: E402
from datasets import Dataset as HFDataset  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    Qwen2Config,
    Qwen2ForCausalLM,
)
from trl import SFTConfig, SFTTrainer  # noqa: E402

from rankstack.config import dump_yaml  # noqa: E402
from rankstack.errors import ConfigError  # noqa: E402
from rankstack.pretrained import resolve_model_path  # noqa: E402
from rankstack.relevance.agrl import guided_prompt, hint_text  # noqa: E402
from rankstack.relevance.data import (  # noqa: E402
    RelevanceRecord,
    load_rule_table,
    load_split,
    sft_examples,
)
from rankstack.relevance.evaluate import evaluate_policy  # noqa: E402
from rankstack.relevance.format import label_token_ids  # noqa: E402
from rankstack.relevance.tokenizer import load_tokenizer, train_tokenizer, training_corpus  # noqa: E402
from rankstack.train.checkpoint import save_json  # noqa: E402
from rankstack.train.rng import seed_everything  # noqa: E402

CHECKPOINT_META = "relevance.json"
#: Every linear layer of a Llama/Qwen2 block.
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class DataConfig:
    """The pairs and how they are written.

    Args:
        dataset: A relevance dataset folder (`relevance_schema`: the city's `relevance/`, ESCI, WANDS).
        world_preset: Instead of `dataset`, generate the city of this preset (tiny, small, …) under the run folder.
        world_seed: The seed of that city.
        variant: `label_first` (default: label, then the five sections), `think_first` or `label_only`.
        rule_text: Write each retrieved rule's text into the prompt (False: only the rule ids).
        max_train_examples: Use N train pairs only, a fixed sample spread over the split (`load_split`; None: all).
        eval_split: The held-out split evaluated before and after training.
        max_eval_examples: Pairs evaluated per split (a fixed sample of N of the eval split and of train).
        hint_share: Add, for this share of the train pairs, a second example whose prompt ends with a guided-replay
            hint (`agrl.hint_text`: the tier, or the tier and the deciding rule, half each) and whose completion is
            the same gold answer. It teaches a from-scratch model to read the hints that AGRL's guided replay and
            DPO's hinted oracles give it (relevance.md §5 assumes a model that can). A pretrained chat model reads
            them without this; 0 (the default) adds nothing.
    """

    dataset: str | None = None
    world_preset: str | None = None
    world_seed: int = 0
    variant: Literal["label_first", "think_first", "label_only"] = "label_first"
    rule_text: bool = True
    max_train_examples: int | None = None
    eval_split: str = "valid"
    max_eval_examples: int = 256
    hint_share: float = 0.0

    def __post_init__(self) -> None:
        if (self.dataset is None) == (self.world_preset is None):
            raise ValueError("data: set exactly one of `dataset` (a relevance dataset folder) and `world_preset` "
                             "(generate the city).")
        if not 0.0 <= self.hint_share <= 1.0:
            raise ValueError(f"data.hint_share is {self.hint_share}; use a share of the train pairs in [0, 1].")


@dataclass
class TokenizerConfig:
    """Args:
        path: Load this tokenizer folder (default: the model's folder when `model.path` is set, else train one).
        vocab_size: Size of the BPE trained on the train split.
        min_frequency: Minimum pair count for a BPE merge.
    """

    path: str | None = None
    vocab_size: int = 1024
    min_frequency: int = 2


@dataclass
class ModelConfig:
    """Args:
        path: A local pretrained causal-LM folder (fp32), or `smollm2` for the packaged SmolLM2-135M-Instruct
            (`rankstack.pretrained`); None builds one from the fields below.
        arch: `llama` or `qwen2` for a model built from a config (random init).
        hidden_size, num_layers, num_heads, num_kv_heads, intermediate_size, max_position_embeddings,
        tie_word_embeddings: the shape of that model.
        lora_r: LoRA rank through PEFT (0: fine-tune every parameter). The adapters are merged into the saved
            checkpoint, so later stages load a plain model.
        lora_alpha, lora_dropout, lora_target_modules: the adapters' scale, dropout and the linear layers they wrap.
    """

    path: str | None = None
    arch: Literal["llama", "qwen2"] = "llama"
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 128
    max_position_embeddings: int = 1024
    tie_word_embeddings: bool = True
    lora_r: int = 0
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: list[str] = field(default_factory=lambda: list(LORA_TARGETS))


@dataclass
class TrainingConfig:
    """Optimisation (§3.1 defaults: cosine with 5 % warm-up, AdamW (0.9, 0.999), clip 1.0).

    Args:
        learning_rate: 1e-3 tiny test model, 5e-4 small from-scratch model, 2e-5 SmolLM2-135M.
        num_epochs: Passes over the train pairs (ignored when `max_steps` > 0).
        max_steps: Stop after this many optimizer steps (-1: run `num_epochs`).
        batch_size: Pairs per device step; the effective batch is batch_size × gradient_accumulation_steps.
        max_length: Longest prompt + completion in tokens (longer ones are truncated on the right).
        bf16: bfloat16 mixed precision (GPU).
        sampling: `random` batches, or `group_by_length` (transformers' `LengthGroupedSampler`: batches of similar
            length, so less padding; worth it when lengths vary a lot, e.g. SFT on histories of 1 to 20 items).
        activation_checkpointing: Recompute activations in the backward pass: less memory, more compute. Off by
            default (TRL's `SFTConfig` turns it on unless told otherwise); worth it only for a large model or long
            sequences on a GPU short of memory.
        seed: Seeds model init, data order and the paraphrase templates.
    """

    learning_rate: float = 1e-3
    num_epochs: float = 1.0
    max_steps: int = -1
    batch_size: int = 8
    gradient_accumulation_steps: int = 1
    warmup_ratio: float = 0.05
    lr_scheduler: str = "cosine"
    max_grad_norm: float = 1.0
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    max_length: int = 1024
    logging_steps: int = 10
    bf16: bool = False
    sampling: Literal["random", "group_by_length"] = "random"
    activation_checkpointing: bool = False
    seed: int = 0


@dataclass
class SFTStageConfig:
    """The SFT stage: data, tokenizer, model and training (configs/relevance/sft_*.yaml)."""

    data: DataConfig
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)


def resolve_dataset(data: DataConfig, out_dir: Path) -> Path:
    """The relevance dataset folder: `data.dataset`, or the city generated under `out_dir` (reused if there)."""
    if data.dataset is not None:
        return Path(data.dataset)
    from rankstack.world import WorldConfig, generate

    world_dir = out_dir / f"world-{data.world_preset}-{data.world_seed}"
    if not (world_dir / "relevance").is_dir():
        generate(WorldConfig.preset(data.world_preset), seed=data.world_seed, out=world_dir, overwrite=True)
    return world_dir / "relevance"


def build_tokenizer(config: SFTStageConfig, train_records: list[RelevanceRecord],
                    rule_table: dict[str, str]) -> Any:
    """The configured tokenizer: loaded from a folder, or trained on the train split."""
    path = config.tokenizer.path or config.model.path
    if path is not None:
        return load_tokenizer(resolve_model_path(path))
    return train_tokenizer(training_corpus(train_records, rule_table), config.tokenizer.vocab_size,
                           config.tokenizer.min_frequency)


def build_model(model: ModelConfig, tokenizer: Any) -> PreTrainedModel:
    """A local pretrained causal LM (fp32), or a random one of the configured shape sized to the tokenizer."""
    if model.path is not None:
        return AutoModelForCausalLM.from_pretrained(resolve_model_path(model.path), dtype=torch.float32)
    config_cls, model_cls = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM)}[
        model.arch]
    config = config_cls(vocab_size=len(tokenizer), hidden_size=model.hidden_size,
                        intermediate_size=model.intermediate_size, num_hidden_layers=model.num_layers,
                        num_attention_heads=model.num_heads, num_key_value_heads=model.num_kv_heads,
                        max_position_embeddings=model.max_position_embeddings,
                        tie_word_embeddings=model.tie_word_embeddings, pad_token_id=tokenizer.pad_token_id,
                        eos_token_id=tokenizer.eos_token_id, bos_token_id=None)
    return model_cls(config)


def lora_config(model: ModelConfig) -> Any:
    """PEFT's LoRA settings for `model`, or None for full fine-tuning."""
    if model.lora_r <= 0:
        return None
    from peft import LoraConfig

    return LoraConfig(r=model.lora_r, lora_alpha=model.lora_alpha, lora_dropout=model.lora_dropout,
                      target_modules=list(model.lora_target_modules), task_type="CAUSAL_LM")


def completion_loss(model: torch.nn.Module, tokenizer: Any, examples: list[dict[str, str]],
                    batch_size: int = 16) -> float:
    """Mean cross-entropy per completion token (completion + eos, as SFTTrainer trains it), without gradients."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(examples), batch_size):
            rows, labels = [], []
            for ex in examples[start:start + batch_size]:
                prompt = tokenizer(ex["prompt"], add_special_tokens=False)["input_ids"]
                full = tokenizer(ex["prompt"] + ex["completion"] + tokenizer.eos_token,
                                 add_special_tokens=False)["input_ids"]
                rows.append(full)
                labels.append([-100] * len(prompt) + full[len(prompt):])
            width = max(len(r) for r in rows)
            input_ids = torch.tensor([r + [tokenizer.pad_token_id] * (width - len(r)) for r in rows], device=device)
            attention = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=device)
            target = torch.tensor([lab + [-100] * (width - len(lab)) for lab in labels], device=device)
            with torch.no_grad():
                logits = model(input_ids=input_ids, attention_mask=attention, use_cache=False).logits
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), target[:, 1:].flatten(),
                                                     ignore_index=-100, reduction="sum")
            total += float(loss)
            count += int((target[:, 1:] != -100).sum())
    finally:
        model.train(was_training)
    return total / max(count, 1)


def evaluate_sft(model: torch.nn.Module, tokenizer: Any, records: list[RelevanceRecord],
                 rule_table: dict[str, str], data: DataConfig, seed: int) -> dict[str, float]:
    """Completion loss, and (unless think-first) the tier metrics of the first-token argmax and the log loss of the
    gold label under the first-token distribution (`evaluate.evaluate_policy` without decoding)."""
    examples = sft_examples(records, tokenizer, rule_table, data.variant, seed, data.rule_text)
    first_token = evaluate_policy(model, tokenizer, records, rule_table, data.variant, data.rule_text,
                                  generate=False).get("first_token", {})
    return {"completion_loss": completion_loss(model, tokenizer, examples), **first_token}


def sft_arguments(training: TrainingConfig, out: Path, completion_only: bool) -> SFTConfig:
    """TRL's `SFTConfig` from a `TrainingConfig`, every setting explicit (one builder for the relevance SFT stage
    and the retrieval stage's CPT and SFT). `completion_only`: loss on the completion of prompt/completion
    records; `False` for language modelling over `text` records."""
    return SFTConfig(
        output_dir=str(out), learning_rate=training.learning_rate, num_train_epochs=training.num_epochs,
        max_steps=training.max_steps, per_device_train_batch_size=training.batch_size,
        gradient_accumulation_steps=training.gradient_accumulation_steps, warmup_steps=training.warmup_ratio,
        lr_scheduler_type=training.lr_scheduler, max_grad_norm=training.max_grad_norm,
        weight_decay=training.weight_decay, adam_beta1=training.adam_beta1, adam_beta2=training.adam_beta2,
        max_length=training.max_length, completion_only_loss=completion_only, packing=False,
        activation_checkpointing=training.activation_checkpointing, bf16=training.bf16,
        logging_steps=training.logging_steps, save_strategy="no", report_to="none",
        train_sampling_strategy=training.sampling, seed=training.seed, data_seed=training.seed, disable_tqdm=True,
        dataloader_num_workers=0, dataloader_pin_memory=torch.cuda.is_available(),
    )


def train_sft(config: SFTStageConfig, out_dir: str | Path) -> dict[str, Any]:
    """Run the SFT stage into `out_dir`; returns the metrics written to `metrics.json`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train_cfg, data = config.training, config.data
    seed_everything(train_cfg.seed)
    dataset_dir = resolve_dataset(data, out)
    rule_table = load_rule_table(dataset_dir)
    train_records = load_split(dataset_dir, "train", data.max_train_examples)
    eval_records = {"train": train_records[:data.max_eval_examples],
                    data.eval_split: load_split(dataset_dir, data.eval_split, data.max_eval_examples)}
    tokenizer = build_tokenizer(config, train_records, rule_table)
    label_ids = label_token_ids(tokenizer)
    model = build_model(config.model, tokenizer).to(process_device())
    dump_yaml(config, out / "config.yaml")

    def evaluate() -> dict[str, dict[str, float]]:
        return {split: evaluate_sft(model, tokenizer, records, rule_table, data, train_cfg.seed)
                for split, records in eval_records.items()}

    before = evaluate()
    initial = parameter_snapshot(model)
    examples = sft_examples(train_records, tokenizer, rule_table, data.variant, train_cfg.seed, data.rule_text)
    hinted = hinted_examples(train_records, examples, tokenizer, rule_table, data, train_cfg.seed)
    examples += hinted
    args = sft_arguments(train_cfg, out / "trainer", completion_only=True)
    lora = lora_config(config.model)
    trainer = SFTTrainer(model=model, args=args, train_dataset=HFDataset.from_list(examples),
                         processing_class=tokenizer, peft_config=lora)
    result = trainer.train()
    after = evaluate()  # PEFT injects the adapters into `model` in place: this is the adapted model

    checkpoint = out / "model"
    if lora is not None:
        model = trainer.model.merge_and_unload()
        model.save_pretrained(str(checkpoint))
    else:
        trainer.save_model(str(checkpoint))
    tokenizer.save_pretrained(str(checkpoint))
    save_json({"stage": "sft", "variant": data.variant, "rule_text": data.rule_text, "label_token_ids": label_ids,
               "dataset": str(dataset_dir), "lora_r": config.model.lora_r}, checkpoint / CHECKPOINT_META)
    with open(out / "train_log.jsonl", "w") as log:
        for row in trainer.state.log_history:
            log.write(json.dumps(row) + "\n")
    metrics = {"checkpoint": str(checkpoint), "train_pairs": len(examples), "hinted_examples": len(hinted),
               "steps": trainer.state.global_step,
               "train_loss": float(result.training_loss), **throughput(trainer, result),
               "max_parameter_change": max_parameter_change(initial, model),
               "before": before, "after": after}
    save_json(metrics, out / "metrics.json")
    return metrics


def hinted_examples(records: list[RelevanceRecord], examples: list[dict[str, str]], tokenizer: Any,
                    rule_table: dict[str, str], data: DataConfig, seed: int) -> list[dict[str, str]]:
    """For a `data.hint_share` sample of the pairs (fixed by `seed`), their examples again with the guided-replay
    prompt (`agrl.guided_prompt`) of hint level 1 or 2 at random, and the same gold completion."""
    rng = random.Random(f"hints:{seed}")
    hinted = []
    for record, example in zip(records, examples):
        if rng.random() >= data.hint_share:
            continue
        hint = hint_text(record, rng.choice((1, 2)), rule_table)
        prompt = guided_prompt(tokenizer, record, rule_table, data.variant, data.rule_text, hint)
        hinted.append({"prompt": prompt, "completion": example["completion"]})
    return hinted


def load_checkpoint(path: str | Path) -> tuple[PreTrainedModel, Any, dict[str, Any]]:
    """A saved relevance checkpoint: (model in fp32 on `process_device()`, tokenizer padding left, relevance.json)."""
    path = Path(path)
    meta_path = path / CHECKPOINT_META
    if not meta_path.is_file():
        raise ConfigError(f"{path} is not a relevance checkpoint ({CHECKPOINT_META} is missing); pass the `model/` "
                          "folder of a run written by train_sft.")
    return (AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).to(process_device()),
            load_tokenizer(path),
            json.loads(meta_path.read_text()))


def throughput(trainer: Any, result: Any) -> dict[str, float]:
    """Training wall time and tokens per second of a TRL run (TRL counts `num_tokens`, prompt and completion,
    summed over processes)."""
    runtime = float(result.metrics.get("train_runtime", 0.0))
    tokens = max((row.get("num_tokens", 0.0) for row in trainer.state.log_history), default=0.0)
    return {"train_runtime_s": runtime, "num_tokens": float(tokens),
            "tokens_per_s": float(tokens) / runtime if runtime > 0 else 0.0}


def process_device() -> torch.device:
    """This process's device: its GPU under `accelerate launch` / torchrun, the GPU if there is one, else the CPU."""
    from accelerate import PartialState

    return PartialState().device


def parameter_snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of the parameters, to measure how far a stage moved them."""
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters()}


def max_parameter_change(before: dict[str, torch.Tensor], model: torch.nn.Module) -> float:
    """The largest absolute change of any parameter since `parameter_snapshot`."""
    return max(float((p.detach().cpu() - before[n]).abs().max()) for n, p in model.named_parameters())


__all__ = ["DataConfig", "TokenizerConfig", "ModelConfig", "TrainingConfig", "SFTStageConfig", "sft_arguments",
           "hinted_examples", "resolve_dataset", "build_tokenizer", "build_model", "lora_config", "completion_loss", "evaluate_sft",
           "train_sft", "load_checkpoint", "process_device", "parameter_snapshot", "max_parameter_change", "throughput"]
