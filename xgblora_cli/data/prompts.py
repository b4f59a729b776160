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

from xgblora_cli.common.errors import UserError

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
    train_on_inputs: bool = False  # labels on every token, not only on what the model answers

    @classmethod
    def resolve(cls, tokenizer, template: str, max_len: int, train_on_inputs: bool = False) -> "PromptFormat":
        """The format a recipe's ``prompt_template`` (``auto``/``chat``/``plain``) means for this tokenizer."""
        return cls("chat" if chat_template_of(tokenizer, template) else "plain", bos_ids(tokenizer), max_len, train_on_inputs)

    @classmethod
    def from_dict(cls, data: dict) -> "PromptFormat":
        return cls(str(data["template"]), tuple(int(i) for i in data["bos"]), int(data["max_len"]),
                   bool(data.get("train_on_inputs", False)))

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
        return p + r, (p if self.train_on_inputs else [IGNORE] * len(p)) + r

    def truncate_left(self, ids: list[int], budget: int, starts_with_bos: bool | None = None) -> list[int]:
        """The last items of ``ids`` that fit ``budget``, the BOS (if ``ids`` starts with it, or ``starts_with_bos``)
        kept in front."""
        if len(ids) <= budget:
            return ids
        has_bos = bool(self.bos) and (ids[: len(self.bos)] == list(self.bos) if starts_with_bos is None else starts_with_bos)
        head = ids[: len(self.bos)] if has_bos else []
        keep = max(budget - len(head), 0)
        return head + (ids[len(ids) - keep:] if keep else [])

    def conversation(self, tokenizer, messages: list[dict[str, str]]) -> list[tuple[str, bool]]:
        """A conversation as text pieces in order, each with whether it is learned: an assistant turn's content and
        its end-of-turn token are; system and user turns, role headers and separators are not. The last piece is
        the last answer.

        Chat: each assistant turn is what the tokenizer's template adds when the turn is appended to the
        conversation so far (the template must extend its own output turn by turn). Plain: ``### System:``,
        ``### Instruction:`` / ``### Response:`` blocks, each answer ending in the EOS token. User turns after
        the last assistant turn are left out (nothing follows them to learn).
        """
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        messages = messages[: last + 1]
        pieces: list[tuple[str, bool]] = []
        if not self.chat:
            for i, message in enumerate(messages):
                if message["role"] == "assistant":
                    pieces.append((message["content"] + (tokenizer.eos_token or ""), True))
                elif message["role"] == "system":
                    pieces.append(("### System:\n" + message["content"] + "\n\n", False))
                else:
                    after_answer = "\n\n" if i and messages[i - 1]["role"] == "assistant" else ""
                    pieces.append((after_answer + "### Instruction:\n" + message["content"] + "\n\n### Response:\n", False))
            return pieces
        done = ""
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            prompt = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
            full = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
            if not prompt.startswith(done) or not full.startswith(prompt):
                raise UserError("prompt_template: the tokenizer's chat template does not extend a conversation turn by turn; "
                                "use prompt_template: plain")
            pieces += [(prompt[len(done):], False), (full[len(prompt):], True)]
            done = full
        return pieces

    def encode_conversation(self, tokenizer, messages: list[dict[str, str]]) -> tuple[list[int], list[int]]:
        """Token ids and labels of a conversation, at most ``max_len`` tokens.

        A learned piece's labels stop at its last end-of-turn (EOS) token: a template's line break after it is
        not learned. Too long: whole earlier exchanges (a user turn and its answer) are dropped, a system turn
        kept, until it fits; a last exchange that alone is too long is cut like a single answer (its prompt from
        the left, the answer keeping at least half the budget).
        """
        system = messages[:1] if messages[0]["role"] == "system" else []
        body = messages[len(system):]
        starts = [i for i, m in enumerate(body) if m["role"] == "user" and any(n["role"] == "assistant" for n in body[i:])]
        for start in starts or [0]:
            pieces = self._tokenized(tokenizer, system + body[start:])
            prompt = [i for ids, _ in pieces[:-1] for i in ids]
            answer, learned = pieces[-1]
            if len(prompt) + len(answer) <= self.max_len:
                break
        keep_r = min(len(answer), max(self.max_len - len(prompt), self.max_len // 2))
        prompt_labels = [label for _, piece_labels in pieces[:-1] for label in piece_labels]
        kept = self.truncate_left(list(range(len(prompt))), self.max_len - keep_r, starts_with_bos=prompt[: len(self.bos)] == list(self.bos))
        ids = [prompt[k] for k in kept] + answer[:keep_r]
        labels = [prompt_labels[k] for k in kept] + learned[:keep_r]
        return ids, (list(ids) if self.train_on_inputs else labels)

    def _tokenized(self, tokenizer, messages: list[dict[str, str]]) -> list[tuple[list[int], list[int]]]:
        """Each piece of :meth:`conversation` as (ids, labels); the BOS in front of the first, once."""
        pieces = []
        for number, (text, learned) in enumerate(self.conversation(tokenizer, messages)):
            ids = self.ids(tokenizer, text) if number == 0 else tokenizer(text, add_special_tokens=False)["input_ids"]
            pieces.append((ids, self._learned(tokenizer, ids) if learned else [IGNORE] * len(ids)))
        return pieces

    @staticmethod
    def _learned(tokenizer, ids: list[int]) -> list[int]:
        """Labels of an answer piece: its tokens up to and including its last EOS (the end-of-turn token)."""
        eos = tokenizer.eos_token_id
        end = max((i for i, token in enumerate(ids) if token == eos), default=len(ids) - 1)
        return ids[: end + 1] + [IGNORE] * (len(ids) - end - 1)
