"""The prompt format: how a record or a question becomes tokens, decided once and used by training and eval alike.

A :class:`PromptFormat` holds the template (the tokenizer's ``chat`` template, or ``plain`` Alpaca text), the
ids the tokenizer puts at the start of every sequence (its BOS, if it adds one), and the length limit. It is
resolved once from the recipe and the tokenizer, stored in the run directory (``run.json``) and in a merged
folder (``xgblora_merge.json``), and read back by ``xgblora eval``, so a run is always scored in the format it
learned. Text is tokenized without the tokenizer's own special tokens; the BOS ids are then put in front
exactly once (never twice where a chat template already writes the BOS token into the text).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from xgblora_cli.errors import UserError

IGNORE = -100  # label of a position that carries no loss
PLAIN_PROMPT = "### Instruction:\n{instruction}\n\n{input_block}### Response:\n"
TEMPLATES = ("auto", "chat", "plain")


def bos_ids(tokenizer) -> tuple[int, ...]:  # tokenizer: transformers.PreTrainedTokenizerBase
    """The ids the tokenizer adds in front of a sequence (``add_bos_token`` or its post-processor); () if none."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    start = _find(full, plain)
    return tuple(full[:start]) if start > 0 else ()


def _find(haystack: list[int], needle: list[int]) -> int:
    for start in range(len(haystack) - len(needle) + 1):
        if haystack[start : start + len(needle)] == needle:
            return start
    return -1


def chat_template_of(tokenizer, template: str) -> bool:
    """True if ``template`` (``auto``, ``chat``, ``plain``) means the tokenizer's chat template for this tokenizer."""
    has = bool(getattr(tokenizer, "chat_template", None))
    if template == "chat" and not has:
        raise UserError("prompt_template: 'chat' needs a tokenizer with a chat template; this one has none (use 'plain' or 'auto')")
    return template == "chat" or (template == "auto" and has)


@dataclass(frozen=True)
class PromptFormat:
    """How text becomes token ids: ``template`` ``chat`` or ``plain``, the ``bos`` ids, at most ``max_len`` tokens."""

    template: str
    bos: tuple[int, ...]
    max_len: int

    @classmethod
    def resolve(cls, tokenizer, template: str, max_len: int) -> "PromptFormat":
        """The format a recipe's ``prompt_template`` (``auto``/``chat``/``plain``) means for this tokenizer."""
        return cls("chat" if chat_template_of(tokenizer, template) else "plain", bos_ids(tokenizer), max_len)

    @classmethod
    def from_dict(cls, data: dict) -> "PromptFormat":
        return cls(str(data["template"]), tuple(int(i) for i in data["bos"]), int(data["max_len"]))

    def to_dict(self) -> dict:
        return {**asdict(self), "bos": list(self.bos)}

    @property
    def chat(self) -> bool:
        return self.template == "chat"

    def describe(self) -> str:
        """``chat template, BOS 1, at most 512 tokens``: one line for logs."""
        bos = f"BOS {','.join(map(str, self.bos))}" if self.bos else "no BOS"
        return f"{self.template} {'template' if self.chat else 'prompt'}, {bos}, at most {self.max_len} tokens"

    def prompt_text(self, tokenizer, instruction: str, shots: list[tuple[str, str]] = ()) -> str:  # type: ignore[assignment]
        """The text before a response: worked ``(prompt, answer)`` examples as earlier turns, then ``instruction``."""
        if self.chat:
            messages = []
            for prompt, answer in shots:
                messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
            messages.append({"role": "user", "content": instruction})
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        plain = lambda prompt: PLAIN_PROMPT.format(instruction=prompt, input_block="")  # noqa: E731
        return "".join(plain(p) + a + "\n\n" for p, a in shots) + plain(instruction)

    def render(self, tokenizer, record: dict[str, str]) -> tuple[str, str]:
        """``(prompt, response)`` text of an ``{instruction, input, output}`` record; the loss covers the response."""
        if not self.chat:
            block = f"### Input:\n{record['input']}\n\n" if record["input"] else ""
            prompt = PLAIN_PROMPT.format(instruction=record["instruction"], input_block=block)
            return prompt, record["output"] + (tokenizer.eos_token or "")
        user = record["instruction"] + (f"\n\n{record['input']}" if record["input"] else "")
        messages = [{"role": "user", "content": user}]
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": record["output"]}], tokenize=False)
        if not full.startswith(prompt):
            raise UserError("prompt_template: the tokenizer's chat template does not extend the prompt with the answer; use prompt_template: plain")
        return prompt, full[len(prompt):]

    def ids(self, tokenizer, text: str) -> list[int]:
        """``text`` as ids with the BOS in front exactly once (kept if the text itself starts with it)."""
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        bos = list(self.bos)
        return ids if not bos or ids[: len(bos)] == bos else bos + ids

    def encode(self, tokenizer, prompt: str, response: str) -> tuple[list[int], list[int]]:
        """Token ids and labels (``-100`` on the prompt and the BOS), at most ``max_len`` tokens.

        Over-long examples keep at least half the budget (or all of it) for the response and cut the prompt
        from the left after the BOS, so the question's end, nearest the answer, survives.
        """
        p = self.ids(tokenizer, prompt)
        r = tokenizer(response, add_special_tokens=False)["input_ids"]
        keep_r = min(len(r), max(self.max_len - len(p), self.max_len // 2))
        p = self.truncate_left(p, self.max_len - keep_r)
        r = r[:keep_r]
        return p + r, [IGNORE] * len(p) + r

    def truncate_left(self, ids: list[int], budget: int) -> list[int]:
        """The last tokens of ``ids`` that fit ``budget``, the BOS (if ``ids`` starts with it) kept in front."""
        if len(ids) <= budget:
            return ids
        bos = list(self.bos) if self.bos and ids[: len(self.bos)] == list(self.bos) else []
        keep = max(budget - len(bos), 0)
        return bos + (ids[len(ids) - keep:] if keep else [])
