"""The cluster view (Envoy's cluster manager): members, who holds which key, who may serve now.

Rebuilt when a node's state or inventory changes, never per request. A node whose KCV for an
alias differs from the majority of holders is flagged and excluded for that alias; on a tie every
holder is (fail closed). The majority is taken over every node's last known inventory, down nodes
included: otherwise, with the agreeing holders down, the outlier would become the majority and
serve the alias with the wrong key.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from hsmlb.errors import InvalidArgument, KeyNotFound, Unavailable
from hsmlb.health import NodeHealth
from hsmlb.ops import NATIVE_KEY_USAGE, OP_KEY_TYPES, OP_TRAITS, KeyInfo, Operation, OpKind
from hsmlb.pool import NodePool
from hsmlb.router.breaker import NodeBreaker

log = logging.getLogger("hsmlb.cluster")


@dataclass(eq=False)
class Member:
    pool: NodePool
    health: NodeHealth
    breaker: NodeBreaker
    panic_routes: int = 0
    retries_from: int = 0
    kcv_conflicts: list[str] = field(default_factory=list)
    throttled: int = 0  # requests this node pushed back (quota or APC ThrottlingException)
    skipped: dict[str, int] = field(default_factory=dict)  # capability -> requests it could not serve
    pool_name: str = ""  # the routing pool (config `pool`); routes rank pools, not nodes

    @property
    def name(self) -> str:
        return self.pool.name

    @property
    def up(self) -> bool:
        return self.pool.backend.state == "up"

    def __repr__(self) -> str:
        return f"Member({self.name})"


class Cluster:
    def __init__(self, members: list[Member]) -> None:
        self.members = members
        self.by_name = {m.name: m for m in members}
        self._holders: dict[str, list[Member]] = {}
        self._keys: dict[str, KeyInfo] = {}
        self._unread: list[str] = []  # nodes never up yet: their inventory is unknown, not empty
        self._ever_up: set[str] = set()
        self._checked: set[tuple[str, tuple[Any, ...]]] = set()  # (alias, request shape) that check_native_key passed
        self.rebuild()

    def rebuild(self, *_: object) -> None:
        """Recompute alias -> holders: the nodes that are up and agree with the KCV majority."""
        self._ever_up.update(m.name for m in self.members if m.up)
        self._unread = [m.name for m in self.members if m.name not in self._ever_up]
        kcvs: dict[str, Counter[str]] = {}
        for member in self.members:  # every known inventory votes, up or not (see the module doc)
            for alias, key in member.pool.backend.keys.items():
                kcvs.setdefault(alias, Counter())[key.kcv] += 1
        agreed = {alias: _majority(counts) for alias, counts in kcvs.items()}
        holders: dict[str, list[Member]] = {}
        keys: dict[str, KeyInfo] = {}
        for member in self.members:
            member.kcv_conflicts = []
            if not member.up:
                continue
            for alias, key in member.pool.backend.keys.items():
                if key.kcv != agreed[alias]:
                    member.kcv_conflicts.append(alias)
                    log.error("node %s: KCV of %s %s; excluded for it", member.name, alias,
                              "differs from the other holders" if agreed[alias] is not None
                              else "ties with a different one elsewhere: no majority")
                    continue
                holders.setdefault(alias, []).append(member)
                keys.setdefault(alias, key)
        self._holders, self._keys = holders, keys
        self._checked = set()

    def key(self, alias: str | None) -> KeyInfo | None:
        return self._keys.get(alias) if alias else None

    def agreed_holders(self, alias: str) -> list[Member]:
        """The up nodes holding `alias` with the agreed KCV (no capability check, no counting)."""
        return self._holders.get(alias, [])

    def holders(self, op: Operation) -> list[Member]:
        """Nodes that hold every key of the op (with the agreed KCV) and can do it; raises for caller errors.

        Holders whose kind cannot serve the op are counted per capability ("skipped operations"),
        which tells an operator what a migration to that kind would still miss.
        """
        needs = op.needs
        if op.key_alias is None:
            return [m for m in self.members if needs in m.pool.backend.capabilities]
        holders = self._holders_of(op.key_alias)
        for alias in op.other_keys:
            others = self._holders_of(alias)
            holders = [m for m in holders if m in others]
        if not holders:
            return []  # known, but no holder of every key is up: UNAVAILABLE, decided by the router
        if not op.apc:  # payment ops: the engine or APC checks the key's TR-31 usage and algorithm
            shape = _check_shape(op)
            if shape is None:
                check_native_key(op, self._keys[op.key_alias])
            elif (op.key_alias, shape) not in self._checked:  # the same request shape passes the same checks
                check_native_key(op, self._keys[op.key_alias])
                if len(self._checked) >= MAX_CHECKED:
                    self._checked.clear()
                self._checked.add((op.key_alias, shape))
        capable = []
        for member in holders:
            if needs in member.pool.backend.capabilities:
                capable.append(member)
            else:
                member.skipped[needs] = member.skipped.get(needs, 0) + 1
        return capable

    def _holders_of(self, alias: str) -> list[Member]:
        holders = self._holders.get(alias)
        if holders:
            return holders
        if any(alias in m.pool.backend.keys for m in self.members):
            return []
        if self._unread:  # a node not yet discovered may hold it: NOT_FOUND would say it does not exist
            raise Unavailable(f"no node that is up holds a key with alias {alias}; the inventory of "
                              f"{', '.join(self._unread)} is not known yet")
        raise KeyNotFound(f"no node holds a key with alias {alias}")

    def ejected_count(self, now: float) -> int:
        return sum(1 for m in self.members if m.health.ejected_until is not None)


BLOCK_BYTES = {"AES": 16, "DES3": 8}
MAX_CHECKED = 4096  # remembered (alias, request shape) pairs; forgotten all at once beyond, and on every rebuild


def _check_shape(op: Operation) -> tuple[Any, ...] | None:
    """What of the op check_native_key looks at besides its key: equal shapes pass or fail alike.
    None: not remembered (the op kinds whose checks read more of the request)."""
    kind = op.kind
    if kind is OpKind.ENCRYPT or kind is OpKind.DECRYPT:
        return kind, op.args[0], len(op.args[1])  # mode, IV length
    if kind is OpKind.GENERATE_MAC:
        return kind, op.args[0], op.args[2]  # algorithm, MAC length
    if kind is OpKind.VERIFY_MAC:
        return kind, op.args[0], len(op.args[2])  # algorithm, MAC length
    return None


def _article(name: str) -> str:
    return f"{'an' if name[:1] in 'AEIOR' else 'a'} {name}"


def check_native_key(op: Operation, key: KeyInfo) -> None:
    """Refuse, before routing, a native op that the key's type, usages or block size forbid."""
    a = _article
    allowed_types = OP_KEY_TYPES.get(op.kind)
    if allowed_types and key.key_type not in allowed_types:
        key_types = sorted(allowed_types)  # only for the message
        names = key_types[0] if len(key_types) == 1 else f"{', '.join(key_types[:-1])} or {key_types[-1]}"
        raise InvalidArgument(f"key_identifier: key {key.alias} is {a(key.key_type)} key; "
                              f"{op.kind.value} needs {a(names)} key")
    check_tr31_usage(op, key)
    usage = OP_TRAITS[op.kind].usage
    if usage and usage not in key.usages:
        allowed = ", ".join(sorted(key.usages)) or "none"
        raise InvalidArgument(f"key_identifier: key {key.alias} does not allow {op.kind.value} (its usages: {allowed})")
    block = BLOCK_BYTES.get(key.key_type, 0)
    if block and op.kind in (OpKind.ENCRYPT, OpKind.DECRYPT):
        mode, iv, _ = op.args
        prefix = "encryption" if op.kind is OpKind.ENCRYPT else "decryption"
        if mode == "CBC" and len(iv) != block:
            raise InvalidArgument(f"{prefix}_attributes.symmetric.initialization_vector: must be {block} bytes "
                                  f"for {a(key.key_type)} key")
    if block and op.kind in (OpKind.GENERATE_MAC, OpKind.VERIFY_MAC) and op.args[0] == "CMAC":
        length = op.args[2] if op.kind is OpKind.GENERATE_MAC else len(op.args[2])
        if length is not None and length > block:
            mac_field = "mac_length" if op.kind is OpKind.GENERATE_MAC else "mac"
            raise InvalidArgument(f"{mac_field}: must be 4-{block} bytes for CMAC with {a(key.key_type)} key")


def check_tr31_usage(op: Operation, key: KeyInfo) -> None:
    """Key separation, as APC enforces it: the key's TR-31 usage (and HMAC hash) must fit the op."""
    if not key.key_usage:
        return  # a token whose keys carry no recorded usage: its PKCS#11 attributes decide
    family = op.args[0][:4] if op.kind in (OpKind.GENERATE_MAC, OpKind.VERIFY_MAC) else ""
    allowed = NATIVE_KEY_USAGE.get((op.kind, family))
    if allowed is not None and key.key_usage not in allowed:
        what = op.args[0] if family else op.kind.value
        raise InvalidArgument(f"key_identifier: key {key.alias} has usage {key.key_usage}; "
                              f"{what} needs {' or '.join(sorted(allowed))}")
    if family == "HMAC" and key.algorithm.startswith("HMAC") and op.args[0] != key.algorithm:
        raise InvalidArgument(f"key_identifier: key {key.alias} is an {key.algorithm} key; "
                              f"it cannot compute {op.args[0]}")


def _majority(counts: Counter[str]) -> str | None:
    """The KCV most holders report; None on a tie, which nobody may serve: with no majority there is
    no telling which key is the right one, and a wrong key answers with wrong crypto, not an error."""
    ranked = counts.most_common(2)
    if len(ranked) > 1 and ranked[0][1] == ranked[1][1]:
        return None
    return ranked[0][0]
