"""The prefix index: which prompt prefixes each backend has evaluated lately, so routing can
estimate, for any request and backend, how many of its prompt tokens are cached there.

Ollama (llama.cpp underneath) keeps, per loaded model and per parallel slot, the tokens it
last evaluated: a prompt that starts with them evaluates only the rest. Agent sessions send
their whole conversation every turn (a system prompt and tools of 10-25 thousand tokens
shared by every session, then a history that grows), so where the prefix is cached decides
seconds of time to first token.

A request's prompt is fingerprinted (`Prompt`, built by `chat_prompt` and `generate_prompt`)
as cumulative 64-bit hashes (xxh3) of the messages as sent, a key at the end of each message
and every `BLOCK_BYTES` within a long one, each key with the prompt's estimated tokens up to
it (text bytes over the model's bytes per token, learned from the backends' counts; a
generate's `context` counts its token ids exactly). Two prompts share a key exactly when
they share everything before it (the model, the tools, the messages so far), so sessions
that share a system prompt share its keys.

Each backend's `BackendPrefixes` models its cache as Ollama keeps it: per model, the key
lists of the last `slots` prompts it evaluated (a prompt that extends one goes on in its
slot, as Ollama's runner does; otherwise the least recently used is replaced), every key
counted once however many prompts hold it. The longest prefix of a request cached there is
then a binary search over the request's keys (a key held means every key before it is); a
pool keeps one map of each key to the backends holding it (`PrefixHolders`), so ranking
finds every backend's longest prefix from a few searches for the whole fleet.
It also tells what a request would push out (`displaced`): with every slot taken, the
least recently used prompt's tokens that no other prompt there shares, when its
conversation is live; Ollama keeps one prompt per parallel slot, so a backend that takes
a third conversation into two slots makes one of them evaluate its history again.
A run's reply extends its prompt (the next turn sends it back); a generate's `context`
replaces it by the whole conversation's token ids, the text it was first sent as kept
beside them (an alias: the same slot, so a new session sending the same system prompt as
text still finds it).

A client may name its session (`RunSpec.session`: OpenAI's `prompt_cache_key`, an
`x-session-affinity` header, ...). `SessionHomes` remembers, per model and session, the
backend its last turn ran on and how many tokens it left cached there: that backend is
taken to hold at least the longest prefix of the request any backend holds (up to that
count), and wins ties (within the estimates' noise: `app.backends.pool.HOME_TIE_SECONDS`).
A routing signal only, chosen by the client: it grants nothing.

A named session's last chat prompt is kept too (`SessionPrompts`: its messages and keys),
so that its next turn, the same messages and a few more, is fingerprinted by comparing the
messages and hashing only the new ones.

Everything here is in-process and bounded (`max_entries` keys per backend, `max_sessions`
sessions, `ChatMemo`'s entries and keys, `SessionPrompts`' sessions and bytes): a cache of what this process sent, which each replica learns on its own; a
process that does not know a prefix only routes less well.
"""

from __future__ import annotations

import threading
import time
from array import array
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import xxhash

__all__ = [
    "BLOCK_BYTES",
    "BackendPrefixes",
    "ChatMemo",
    "PrefixHolders",
    "Prompt",
    "SessionHomes",
    "SessionPrompts",
    "chat_prompt",
    "generate_prompt",
    "session_key",
]

BLOCK_BYTES = 2048
"""Text hashed under one key, at most (about 500 tokens): a long message gets a key every
`BLOCK_BYTES`, so a prefix shared part-way through one (a system prompt whose end differs)
is still found, to within a block."""
CONTEXT_BLOCK = 512
"""Token ids of a generate's `context` under one key."""
MESSAGE_BYTES = 12
"""What a message adds to its content in the prompt (the template's role markers), in
bytes of text."""
DEFAULT_BYTES_PER_TOKEN = 4.0
"""Bytes of text per token before a backend has reported counts for the model."""

_hash = xxhash.xxh3_64_intdigest
_MASK = (1 << 64) - 1
_ROLES: dict[str, int] = {}


def _salt(text: str) -> int:
    """A stable 64-bit number for a short string (a role, a kind, a model)."""
    salt = _ROLES.get(text)
    if salt is None:
        salt = _hash(text.encode("utf-8", "surrogatepass"))
        if len(_ROLES) < 64:  # roles are few; anything else is not kept
            _ROLES[text] = salt
    return salt


class Ends(Protocol):
    """Estimated prompt tokens up to the end of each key's block, as far as asked (a list,
    or a prompt's `ends_view`)."""

    def __getitem__(self, part: slice, /) -> Sequence[float]: ...


@dataclass(slots=True)
class Prompt:
    """A request's prompt as the index sees it (see the module docstring)."""

    model: str
    """The model's key (prompts of different models share nothing)."""
    kind: str
    """`chat` or `generate`."""
    keys: list[int] = field(default_factory=list)
    """Cumulative hashes, one at the end of each block."""
    text_bytes: list[int] = field(default_factory=list)
    """Bytes of text up to the end of each key's block (its estimated tokens are these over
    `bytes_per_token`, plus `id_tokens`)."""
    id_tokens: list[float] = field(default_factory=list)
    """Tokens counted exactly (a generate's `context` ids) up to the end of each key's block;
    empty when there are none (a chat)."""
    session: int | None = None
    """`session_key` of the client's session name, if it gave one."""
    bytes_per_token: float = DEFAULT_BYTES_PER_TOKEN
    """The text's bytes per token its estimates were made with."""
    estimates: dict[str, Estimate] = field(default_factory=dict)
    """Filled by the pool's ranking: its estimate per backend name."""
    chosen: str | None = None
    """The backend the run went to (set when its slot was held)."""
    sequence: int | None = None
    """The chosen backend's sequence holding this prompt (`BackendPrefixes.record`)."""
    _ends: list[float] | None = field(default=None, compare=False, repr=False)

    @property
    def ends(self) -> list[float]:
        """Estimated prompt tokens up to the end of each key's block (worked out when first
        asked: ranking needs only a few of them)."""
        ends = self._ends
        if ends is None or len(ends) != len(self.keys):
            per_token, ids = self.bytes_per_token, self.id_tokens
            if ids:
                ends = [t + b / per_token for t, b in zip(ids, self.text_bytes, strict=True)]
            else:
                ends = [0.0 + b / per_token for b in self.text_bytes]
            self._ends = ends
        return ends

    def ends_view(self) -> Ends:
        """`ends` worked out for the part asked only (recording a turn that goes on in its
        slot needs its new keys' alone)."""
        return _EndsView(self)

    @property
    def tokens(self) -> float:
        return self.tokens_at(len(self.text_bytes))

    def tokens_at(self, matched: int) -> float:
        """Estimated tokens of the first `matched` keys."""
        if matched <= 0:
            return 0.0
        ids = self.id_tokens
        return (ids[matched - 1] if ids else 0.0) + self.text_bytes[
            matched - 1
        ] / self.bytes_per_token

    def extended(self, role: str, content: str) -> Prompt:
        """The keys (and token counts) of one more message after this prompt: the reply, as
        the next turn sends it back."""
        more = Prompt(self.model, self.kind)
        seed = self.keys[-1] if self.keys else _salt(self.model)
        build = _Builder(more, seed, self.bytes_per_token)
        build.tokens = self.tokens
        build.text(role, content)
        return build.done()


class _EndsView:
    __slots__ = ("prompt",)

    def __init__(self, prompt: Prompt) -> None:
        self.prompt = prompt

    def __getitem__(self, part: slice, /) -> list[float]:
        prompt = self.prompt
        if prompt._ends is not None and len(prompt._ends) == len(prompt.keys):
            return prompt._ends[part]
        per_token, ids = prompt.bytes_per_token, prompt.id_tokens
        if ids:
            return [
                t + b / per_token for t, b in zip(ids[part], prompt.text_bytes[part], strict=True)
            ]
        return [0.0 + b / per_token for b in prompt.text_bytes[part]]


class Estimate(NamedTuple):
    """What routing expects of one backend for one request."""

    ttft: float
    """Expected seconds to the first token: wait, load, and uncached prompt tokens."""
    cached: float
    """Prompt tokens expected cached there."""
    matched: int
    """Keys of the prompt held there."""
    displaced: float = 0.0
    """Tokens of a live conversation it would push out of the cache there."""


def session_key(model: str, session: str | None) -> int | None:
    if not session:
        return None
    return _hash(session.encode("utf-8", "surrogatepass"), _salt("session\0" + model))


def _start(kind: str, model: str, tools: Any = None) -> int:
    seed = _salt(kind) ^ _hash(model.encode("utf-8", "surrogatepass"))
    if tools:
        seed = _hash(_tools_text(tools).encode("utf-8", "surrogatepass"), seed)
    return seed & _MASK


def _tools_text(tools: Any) -> str:
    """The tools offered, cheaply: each one's name and the length of its description (a
    tool list is tens of kilobytes of schema; its names tell two agents' lists apart)."""
    if not isinstance(tools, list):
        return repr(type(tools))
    parts: list[str] = []
    for tool in tools:
        function = tool.get("function") if isinstance(tool, Mapping) else None
        if isinstance(function, Mapping):
            name, description = function.get("name"), function.get("description")
        elif isinstance(tool, Mapping):
            name, description = tool.get("name"), tool.get("description")
        else:
            name, description = tool, None
        parts.append(f"{name}:{len(description) if isinstance(description, str) else 0}")
    return "\x1f".join(parts)


class ChatMemo:
    """The keys of the blocks of long messages fingerprinted lately, by one hash of the
    message and everything before it (its role, what it holds besides text, the cumulative
    key it follows): an agent sends its system prompt and its history again every turn,
    and one hash of each message in C then replaces a step of Python per block (most of a
    long prompt's fingerprinting). Each entry keeps the message's block keys and the text
    bytes up to each (the key it follows fixes the text before it), exactly those hashing
    the blocks again gives. Bounded: at `max_entries` messages or `max_keys` keys in all
    it starts again empty."""

    def __init__(self, max_entries: int = 262_144, max_keys: int = 262_144) -> None:
        self.max_entries = max(1, max_entries)
        self.max_keys = max(1, max_keys)
        self.keys = 0
        """Keys held in all."""
        self._entries: dict[int, tuple[int, tuple[int, ...], tuple[int, ...]]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, whole: int, start: int) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
        """The keys and text bytes of the message hashed to `whole`, whose text starts after
        `start` bytes."""
        found = self._entries.get(whole)
        if found is None or found[0] != start:
            return None
        return found[1], found[2]

    def put(self, whole: int, start: int, keys: tuple[int, ...], ends: tuple[int, ...]) -> None:
        if len(self._entries) >= self.max_entries or self.keys + len(keys) > self.max_keys:
            self._entries.clear()
            self.keys = 0
        self._entries[whole] = (start, keys, ends)
        self.keys += len(keys)


class _Builder:
    """Keys and token counts of a prompt, block by block (a generate's, a reply's; a chat's
    messages go through `_messages`)."""

    __slots__ = ("bytes", "memo", "prompt", "seed", "tokens")

    def __init__(
        self, prompt: Prompt, seed: int, bytes_per_token: float, memo: ChatMemo | None = None
    ) -> None:
        prompt.bytes_per_token = bytes_per_token
        self.memo = memo
        self.prompt = prompt
        self.seed = seed
        self.tokens = 0.0
        self.bytes = 0

    def text(self, role: str, text: str) -> None:
        """One message (or a generate's system or prompt): its content in blocks."""
        prompt = self.prompt
        before = len(prompt.keys)
        message = ({"role": role, "content": text},)
        self.seed, self.bytes = _messages(
            prompt.keys, prompt.text_bytes, self.seed, self.bytes, message, self.memo
        )
        prompt.id_tokens.extend([self.tokens] * (len(prompt.keys) - before))

    def token_ids(self, ids: Sequence[int]) -> None:
        """A generate's `context`: token ids, counted exactly."""
        data = array("q", ids).tobytes()
        view, step = memoryview(data), CONTEXT_BLOCK * 8
        seed = (self.seed ^ _salt("context")) & _MASK
        prompt = self.prompt
        for start in range(0, len(data), step):
            seed = _hash(view[start : start + step], seed)
            self.tokens += min(step, len(data) - start) // 8
            prompt.keys.append(seed)
            prompt.text_bytes.append(self.bytes)
            prompt.id_tokens.append(self.tokens)
        self.seed = seed

    def done(self) -> Prompt:
        prompt = self.prompt
        if not any(prompt.id_tokens):
            prompt.id_tokens = []  # no token counted exactly: the text's estimate alone
        return prompt


def _messages(
    keys: list[int],
    text_bytes: list[int],
    seed: int,
    done: int,
    messages: Iterable[Mapping[str, Any]],
    memo: ChatMemo | None,
) -> tuple[int, int]:
    """Append the keys of `messages` (as sent: roles, text, what else they hold) after `seed`
    and `done` bytes of text, and the text bytes up to each; the seed and bytes after them.
    The hot loop of fingerprinting: a long message sent before comes from `memo` in one hash
    and one lookup, a short one is one hash."""
    roles, hash_, block, framing = _ROLES, _hash, BLOCK_BYTES, MESSAGE_BYTES
    memoed = memo._entries if memo is not None else None
    for message in messages:
        text = message.get("content")
        if not isinstance(text, str):
            text = "" if text is None else repr(text)
        data = text.encode("utf-8", "surrogatepass")
        role: Any = message.get("role")
        try:
            seed ^= roles[role]  # both 64 bits
        except (KeyError, TypeError):
            seed ^= _salt(str(role or ""))
        if len(message) > 2 and (extra := _message_extra(message)):
            seed = hash_(extra.encode("utf-8", "surrogatepass"), seed)
        done += framing
        size = len(data)
        if size <= block:
            seed = hash_(data, seed)
            done += size
            keys.append(seed)
            text_bytes.append(done)
            continue
        whole = 0
        if memoed is not None:  # a message sent before: its blocks' keys, in one lookup
            whole = hash_(data, seed)
            found = memoed.get(whole)
            if found is not None and found[0] == done:
                keys.extend(found[1])
                text_bytes.extend(found[2])
                seed = found[1][-1]
                done += size
                continue
        first = len(keys)
        view = memoryview(data)
        for start in range(0, size, BLOCK_BYTES):
            seed = _hash(view[start : start + BLOCK_BYTES], seed)
            keys.append(seed)
            text_bytes.append(done + min(start + BLOCK_BYTES, size))
        if memo is not None:
            memo.put(whole, done, tuple(keys[first:]), tuple(text_bytes[first:]))
        done += size
    return seed, done


@dataclass(slots=True)
class _LastPrompt:
    model: str
    tools: Any
    messages: list[Mapping[str, Any]]
    keys: list[int]
    text_bytes: list[int]
    seed: int
    """The cumulative hash after the last message."""
    done: int
    """Text bytes of all its messages."""
    size: int
    """What it is counted as against `SessionPrompts.max_bytes`."""


class SessionPrompts:
    """Each client-named session's last chat prompt: its messages as sent and their keys. An
    agent's next turn sends the same messages again and a few more, so it is fingerprinted
    by one comparison of the messages (in C: the same lengths, then the same bytes) and
    hashing the new ones only, where hashing them all again costs a step of Python a
    message (an agent's history is hundreds). A turn whose messages differ (a client that
    rewrote its history, compacted it, changed its tools) is fingerprinted whole, as any
    request. Bounded: `max_sessions` sessions and `max_bytes` of the text they hold (the
    messages are kept as the requests sent them), least recently used forgotten first."""

    PER_MESSAGE = 320
    """Bytes a kept message is counted as besides its text (its mapping, its role, the
    headers of its strings)."""
    PER_TOOL = 4096
    """Bytes a kept tool is counted as (its name, description and JSON schema, as agents
    send them: one to three kilobytes of JSON, more as Python objects)."""

    def __init__(self, max_sessions: int = 1024, max_bytes: int = 64 << 20) -> None:
        self.max_sessions = max_sessions
        self.max_bytes = max_bytes
        self.bytes = 0
        """What the kept prompts are counted as, in all."""
        self._last: OrderedDict[int, _LastPrompt] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._last)

    def resume(
        self, session: int, model: str, tools: Any, messages: Sequence[Mapping[str, Any]]
    ) -> _LastPrompt | None:
        """The session's last prompt when `messages` start with its messages (same model and
        tools), else None."""
        last = self._last.get(session)
        if last is None:
            return None
        count = len(last.messages)
        if (
            count > len(messages)
            or last.model != model
            or (last.tools is not tools and last.tools != tools)
            or messages[:count] != last.messages
        ):
            return None
        return last

    def keep(
        self,
        session: int,
        model: str,
        tools: Any,
        messages: Sequence[Mapping[str, Any]],
        keys: list[int],
        text_bytes: list[int],
        seed: int,
        done: int,
    ) -> None:
        """Remember the session's prompt (the lists are kept: the caller hands them over)."""
        size = done + self.PER_MESSAGE * len(messages)
        if isinstance(tools, list):
            size += self.PER_TOOL * len(tools)
        if self.max_sessions <= 0 or size > self.max_bytes:
            self.forget(session)
            return
        last = _LastPrompt(model, tools, list(messages), keys, text_bytes, seed, done, size)
        with self._lock:
            old = self._last.pop(session, None)
            if old is not None:
                self.bytes -= old.size
            self._last[session] = last
            self.bytes += size
            while len(self._last) > self.max_sessions or self.bytes > self.max_bytes:
                _, gone = self._last.popitem(last=False)
                self.bytes -= gone.size

    def forget(self, session: int) -> None:
        with self._lock:
            old = self._last.pop(session, None)
            if old is not None:
                self.bytes -= old.size


def chat_prompt(
    model: str,
    messages: Sequence[Mapping[str, Any]],
    *,
    tools: Any = None,
    bytes_per_token: float = DEFAULT_BYTES_PER_TOKEN,
    session: int | None = None,
    memo: ChatMemo | None = None,
    last: SessionPrompts | None = None,
) -> Prompt:
    """A chat's prompt: its messages as sent (roles, text, images, tool calls; thinking is
    left out, as chat templates leave out earlier turns' thinking). With `last` and a
    `session`, a turn that extends the session's last prompt hashes only its new
    messages."""
    prompt = Prompt(model, "chat", session=session, bytes_per_token=bytes_per_token)
    keys, text_bytes = prompt.keys, prompt.text_bytes
    before = None
    if last is not None and session is not None:
        before = last.resume(session, model, tools, messages)
    if before is None:
        seed, done = _messages(keys, text_bytes, _start("chat", model, tools), 0, messages, memo)
    else:
        keys.extend(before.keys)
        text_bytes.extend(before.text_bytes)
        seed, done = before.seed, before.done
        if len(messages) > len(before.messages):
            new = messages[len(before.messages) :]
            seed, done = _messages(keys, text_bytes, seed, done, new, memo)
    if last is not None and session is not None:
        last.keep(session, model, tools, messages, list(keys), list(text_bytes), seed, done)
    return prompt


def _message_extra(message: Mapping[str, Any]) -> str:
    """What a message holds besides its text, cheaply: tool calls, tool names, images (by
    size and ends: an image is megabytes of base64)."""
    parts: list[str] = []
    calls = message.get("tool_calls")
    if calls:
        parts.append(repr(calls))
    name = message.get("tool_name") or message.get("tool_call_id")
    if name:
        parts.append(str(name))
    images = message.get("images")
    if isinstance(images, list):
        for image in images:
            text = str(image)
            parts.append(f"{len(text)}:{text[:64]}:{text[-64:]}")
    return "\x1e".join(parts)


def generate_prompt(
    model: str,
    prompt: str,
    *,
    system: str | None = None,
    context: Sequence[int] | None = None,
    raw: bool = False,
    bytes_per_token: float = DEFAULT_BYTES_PER_TOKEN,
    session: int | None = None,
    memo: ChatMemo | None = None,
) -> Prompt | None:
    """A generate's prompt: its `context` (the conversation's token ids), its system prompt,
    its prompt. None for a `context` that is not token ids (the backend refuses it)."""
    out = Prompt(model, "generate", session=session)
    build = _Builder(out, _start("raw" if raw else "generate", model), bytes_per_token, memo)
    if context:
        try:
            build.token_ids(context)
        except (TypeError, OverflowError):
            return None
    if system:
        build.text("system", system)
    build.text("user", prompt)
    return build.done()


def context_keys(model: str, ids: Sequence[int]) -> Prompt | None:
    """The keys of a finished generate's `context` (its whole conversation), as a next
    generate sending it back will have them first: its token ids' keys and nothing after
    them, so that the next turn's prompt extends it (and goes on in its slot)."""
    if not ids:
        return None
    out = Prompt(model, "generate")
    try:
        build = _Builder(out, _start("generate", model), DEFAULT_BYTES_PER_TOKEN)
        build.token_ids(ids)
    except (TypeError, OverflowError):
        return None
    return build.done()


@dataclass(slots=True)
class _Sequence:
    model: str
    keys: list[int]
    ends: array[float]
    """Estimated tokens up to the end of each key's block."""
    used: float
    """When it was last evaluated or extended (`time.monotonic()`)."""
    alias: list[int] = field(default_factory=list)
    """The same cached tokens under other keys: a generate's conversation as text (its
    system prompt and first prompt) once its `context` ids replace it, so that a new
    session sending the same system prompt as text still finds it here."""


@dataclass(slots=True)
class _Victim:
    """What a new prompt would push out of one model's full cache on a backend, as of one
    version of its prompts."""

    version: int
    tails: list[tuple[int, int]]
    """Each prompt's key count and last key (a prompt extending one goes on in its slot)."""
    used: float
    """When the least recently used prompt was last evaluated."""
    shared: float
    """Its tokens that another prompt there holds too."""
    tokens: float
    """Its tokens."""


LIVE_SECONDS = 300.0
"""A prompt evaluated within this long (Ollama's default keep-alive) is taken to belong to
a conversation that will be back: pushing it out of a backend's cache costs its next turn."""


class PrefixHolders:
    """Which of a pool's backends hold each key, one bit per backend: ranking finds every
    backend's longest cached prefix of a request in a few lookups for the whole fleet
    (`levels`) instead of a binary search per backend. Each `BackendPrefixes` attached to
    it (`attach`) keeps its bit on the keys it holds; bounded by what they hold."""

    def __init__(self) -> None:
        self._bits: dict[int, int] = {}
        self._free: list[int] = []
        self._next = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._bits)

    def allocate(self) -> int:
        """A bit no attached backend has."""
        with self._lock:
            if self._free:
                return 1 << self._free.pop()
            self._next += 1
            return 1 << (self._next - 1)

    def release(self, bit: int, keys: Iterable[int]) -> None:
        """The backend with `bit` is gone: take it off `keys` (what it held) and free it."""
        self.remove(keys, bit)
        with self._lock:
            self._free.append(bit.bit_length() - 1)
            self._free.sort(reverse=True)

    def add(self, keys: Iterable[int], bit: int) -> None:
        bits = self._bits
        with self._lock:
            for key in keys:
                bits[key] = bits.get(key, 0) | bit

    def remove(self, keys: Iterable[int], bit: int) -> None:
        bits, clear = self._bits, ~bit
        with self._lock:
            for key in keys:
                left = bits.get(key, 0) & clear
                if left:
                    bits[key] = left
                else:
                    bits.pop(key, None)

    def levels(self, keys: Sequence[int]) -> list[tuple[int, int]]:
        """Every backend's longest cached prefix of `keys`, as (the backends' bits, how many
        keys) from the longest down; a backend in none holds none. A backend holding a key
        holds every key before it in the request (they hash all that comes before), so the
        longest prefix any backend not yet placed holds is a binary search over `keys`, and
        there are as many searches as distinct lengths held (a shared system prompt, a
        session's history: a few)."""
        get = self._bits.get
        if not keys:
            return []
        pending = get(keys[0], 0)
        out: list[tuple[int, int]] = []
        high = len(keys)
        while pending:
            low = 1  # every pending backend holds keys[:low]; find the largest such low
            while low < high:
                middle = (low + high + 1) // 2
                if get(keys[middle - 1], 0) & pending:
                    low = middle
                else:
                    high = middle - 1
            mask = get(keys[low - 1], 0) & pending
            if not mask:  # changed meanwhile (another thread): the rest hold nothing known
                break
            out.append((mask, low))
            pending &= ~mask
            high = low - 1
        return out


class BackendPrefixes:
    """One backend's prompt cache as the index models it (see the module docstring).

    `slots`: prompts kept per model (Ollama's parallel slots); `max_entries`: keys kept in
    all, the least recently used prompts forgotten first. Safe from several threads."""

    def __init__(self, slots: int = 4, max_entries: int = 4096) -> None:
        self._slots = max(1, slots)
        self.max_entries = max(1, max_entries)
        self._sequences: OrderedDict[int, _Sequence] = OrderedDict()
        self._by_model: dict[str, OrderedDict[int, _Sequence]] = {}
        self._held: dict[int, int] = {}
        self.full_models: set[str] = set()
        """The models whose every slot holds a prompt (`full`)."""
        self.holders: PrefixHolders | None = None
        self.bit = 0
        """This backend's bit in `holders` (0: not attached)."""
        self._next = 0
        self._version = 0
        """Counts changes of the prompts held (what `displaced` worked out is kept per it)."""
        self._victims: dict[str, _Victim] = {}
        self.entries = 0
        """Keys held (counted once for each prompt that holds them)."""
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._held)

    @property
    def slots(self) -> int:
        return self._slots

    @slots.setter
    def slots(self, slots: int) -> None:
        with self._lock:
            self._slots = max(1, slots)
            self.full_models = {m for m, mine in self._by_model.items() if len(mine) >= self._slots}

    def attach(self, holders: PrefixHolders) -> None:
        """Keep this backend's keys in a pool's `holders` (under a bit of its own)."""
        with self._lock:
            if self.holders is not None:
                return
            self.bit = holders.allocate()
            self.holders = holders
            holders.add(self._held, self.bit)

    def detach(self) -> None:
        """Leave the pool's `holders` (the backend left the pool): its keys, its bit."""
        with self._lock:
            holders, self.holders = self.holders, None
            if holders is not None:
                holders.release(self.bit, self._held)
            self.bit = 0

    def matched(self, keys: Sequence[int]) -> int:
        """How many of `keys`, from the first, are cached here."""
        held = self._held
        if not keys or keys[0] not in held:  # most backends, for most requests
            return 0
        return _leading(keys, held, 1)

    def full(self, model: str) -> bool:
        """Every slot of `model` holds a prompt (a new one would push one out)."""
        return model in self.full_models

    def displaced(self, model: str, keys: Sequence[int], kept: float) -> float:
        """Tokens that evaluating a prompt with `keys` here would push out of the cache and
        that a live conversation will want again: those of the model's least recently used
        prompt when every slot is taken and `keys` extends none, less what another prompt
        here (or this one, `kept` tokens of it) still holds. What depends only on this
        backend's prompts is worked out once per change of them (ranking asks it of every
        backend for every request)."""
        mine = self._by_model.get(model)
        if not mine or len(mine) < self._slots:
            return 0.0
        victim = self._victims.get(model)
        if victim is None or victim.version != self._version:
            victim = self._victims[model] = self._victim(mine)
        count = len(keys)
        for n, last in victim.tails:
            if n <= count and keys[n - 1] == last:
                return 0.0  # it goes on in that slot
        if time.monotonic() - victim.used > LIVE_SECONDS:
            return 0.0
        return max(0.0, victim.tokens - max(victim.shared, min(kept, victim.tokens)))

    def _victim(self, mine: OrderedDict[int, _Sequence]) -> _Victim:
        entries = list(mine.values())
        oldest = entries[0]
        shared = _leading(oldest.keys, self._held, 2)
        return _Victim(
            version=self._version,
            tails=[(len(e.keys), e.keys[-1]) for e in entries],
            used=oldest.used,
            shared=oldest.ends[shared - 1] if shared else 0.0,
            tokens=oldest.ends[-1],
        )

    def record(
        self, model: str, keys: Sequence[int], ends: Ends, *, replaces: int | None = None
    ) -> int | None:
        """The backend evaluated a prompt with `keys` (`ends`: tokens up to each) for
        `model`: it now holds it, in the slot of a prompt it extends, else in place of the
        model's least recently used one. `replaces`: the prompt the same tokens were held
        as until now (a generate's text, now its `context` ids), whose keys stay as an
        alias. Returns the prompt's id (for `extend`, `drop`)."""
        if not keys:
            return None
        limit = min(len(keys), self.max_entries)
        with self._lock:
            alias: list[int] = []
            if replaces is not None and (old := self._sequences.get(replaces)) is not None:
                alias = old.alias or old.keys
                self._remove(replaces)
            mine = self._by_model.setdefault(model, OrderedDict())
            # the prompt this one goes on from, in its slot: its keys stay held and only the
            # new ones are added (an agent's next turn resends hundreds of keys)
            kept: _Sequence | None = None
            for i, entry in mine.items():
                n = len(entry.keys)
                if n <= limit and keys[n - 1] == entry.keys[-1]:
                    alias = alias or entry.alias
                    if keys[:n] == entry.keys:  # it goes on in that slot
                        kept = entry
                        del mine[i], self._sequences[i]
                    else:
                        self._remove(i)
                    break
            while len(mine) >= self._slots:
                self._remove(next(iter(mine)))
            self._next += 1
            self._version += 1
            alias = alias[: self.max_entries - limit]
            if kept is None:
                entry = _Sequence(
                    model, list(keys[:limit]), array("f", ends[:limit]), time.monotonic(), alias
                )
                self._hold(entry.keys)
                self._hold(alias)
            else:
                entry, held = kept, len(kept.keys)
                new = keys[held:limit]
                entry.keys.extend(new)
                entry.ends.extend(ends[held:limit])
                entry.used = time.monotonic()
                self._hold(new)
                if alias != entry.alias:
                    self._release(entry.alias)
                    self._hold(alias)
                self.entries -= held + len(entry.alias)
                entry.alias = alias
            self._sequences[self._next] = mine[self._next] = entry
            if len(mine) >= self._slots:
                self.full_models.add(model)
            else:
                self.full_models.discard(model)
            self.entries += limit + len(alias)
            self._trim()
            return self._next

    def extend(self, sequence: int | None, keys: Sequence[int], ends: Ends) -> None:
        """The prompt `sequence` went on (its reply): `keys` follow it."""
        with self._lock:
            entry = self._sequences.get(sequence) if sequence is not None else None
            if entry is None or not keys or len(entry.keys) + len(keys) > self.max_entries:
                return
            entry.keys.extend(keys)
            entry.ends.extend(ends[: len(keys)])
            entry.used = time.monotonic()
            self._version += 1
            self._hold(keys)
            self.entries += len(keys)
            assert sequence is not None
            self._sequences.move_to_end(sequence)
            self._by_model[entry.model].move_to_end(sequence)
            self._trim()

    def drop(self, sequence: int | None) -> None:
        """Forget one prompt."""
        with self._lock:
            if sequence is not None and sequence in self._sequences:
                self._remove(sequence)

    def forget_model(self, model: str) -> None:
        """The model was unloaded here: its prompt cache went with it."""
        with self._lock:
            for i in list(self._by_model.get(model, ())):
                self._remove(i)
            self._by_model.pop(model, None)

    def models(self) -> set[str]:
        return {model for model, mine in self._by_model.items() if mine}

    def _trim(self) -> None:
        while self.entries > self.max_entries and len(self._sequences) > 1:
            self._remove(next(iter(self._sequences)))

    def _hold(self, keys: Sequence[int]) -> None:
        held = self._held
        new: list[int] = []
        for key in keys:
            count = held.get(key, 0)
            held[key] = count + 1
            if not count:
                new.append(key)
        if new and self.holders is not None:
            self.holders.add(new, self.bit)

    def _remove(self, sequence: int) -> None:
        self._version += 1
        entry = self._sequences.pop(sequence)
        mine = self._by_model[entry.model]
        del mine[sequence]
        if len(mine) < self._slots:
            self.full_models.discard(entry.model)
        self._release(entry.keys)
        self._release(entry.alias)
        self.entries -= len(entry.keys) + len(entry.alias)

    def _release(self, keys: Sequence[int]) -> None:
        held = self._held
        gone: list[int] = []
        for key in keys:
            count = held.get(key, 0) - 1
            if count > 0:
                held[key] = count
            else:
                held.pop(key, None)
                gone.append(key)
        if gone and self.holders is not None:
            self.holders.remove(gone, self.bit)


def _leading(keys: Sequence[int], held: Mapping[int, int], least: int) -> int:
    """How many of `keys`, from the first, `held` counts at least `least` times (a key held
    means every key before it in its prompt is: a binary search)."""
    if not keys or held.get(keys[0], 0) < least:
        return 0
    low, high = 1, len(keys)  # keys[:low] are held; find the largest such low
    while low < high:
        middle = (low + high + 1) // 2
        if held.get(keys[middle - 1], 0) >= least:
            low = middle
        else:
            high = middle - 1
    return low


@dataclass(slots=True)
class _Home:
    backend: str
    tokens: float
    expires: float


class SessionHomes:
    """Per model and client-named session: the backend its last turn ran on and the prompt
    tokens it left cached there (bounded, least recently used forgotten first; expiring)."""

    def __init__(self, max_sessions: int = 10_000, ttl: float = 600.0) -> None:
        self.max_sessions = max_sessions
        self.ttl = ttl
        self._homes: OrderedDict[int, _Home] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._homes)

    def home(self, session: int | None) -> tuple[str, float] | None:
        if session is None or self.max_sessions <= 0:
            return None
        with self._lock:
            entry = self._homes.get(session)
            if entry is None:
                return None
            if entry.expires <= time.monotonic():
                del self._homes[session]
                return None
            self._homes.move_to_end(session)
            return entry.backend, entry.tokens

    def remember(self, session: int | None, backend: str, tokens: float) -> None:
        if session is None or self.max_sessions <= 0:
            return
        with self._lock:
            self._homes[session] = _Home(backend, tokens, time.monotonic() + self.ttl)
            self._homes.move_to_end(session)
            while len(self._homes) > self.max_sessions:
                self._homes.popitem(last=False)

    def forget(self, backend: str) -> None:
        with self._lock:
            for key in [k for k, home in self._homes.items() if home.backend == backend]:
                del self._homes[key]
