"""Identity resolution: which user a record belongs to, merging users that turn out to be one.

Records are resolved a batch at a time. The batch's identity values are matched against the
stored identities in one set-based lookup; then values that one record carries together, or
that one stored user holds, are one person (union-find over values and users). A person
matching no user becomes a new user; matching one, that user; matching several, they are
merged into the oldest (lowest id), which keeps every identity, event and property of the
others.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

from opencdp.catalog.model import Property
from opencdp.store.base import StoreWriter, Token


def normalize(key: str, value: object) -> str | None:
    """The matching form of an identity value; None when it is empty.

    >>> normalize("email", "  Zhang.San@Example.COM "), normalize("mobile", 18366668888)
    ('zhang.san@example.com', '18366668888')
    >>> normalize("mobile", "   ") is None
    True
    """
    if value is None or isinstance(value, bool | dict | list):
        return None
    if isinstance(value, float):
        text = str(int(value)) if value.is_integer() else str(value)
    else:
        text = str(value).strip()
    if not text:
        return None
    if "email" in key.lower():
        text = text.lower()
    return text


@dataclass
class Resolution:
    user_ids: list[int]  # per record
    new_users: set[int] = field(default_factory=set)
    merges: dict[int, int] = field(default_factory=dict)  # loser -> survivor


Node = Hashable  # an identity value (a Token) or a stored user (``("user", id)``)


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[Node, Node] = {}

    def find(self, x: Node) -> Node:
        parent = self.parent
        root = x
        while parent.setdefault(root, root) != root:
            root = parent[root]
        while x != root:  # path compression
            parent[x], x = root, parent[x]
        return root

    def union(self, a: Node, b: Node) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra


def resolve(
    w: StoreWriter,
    project_id: int,
    tokens: Sequence[Sequence[Token]],
    user_props: Sequence[Property],
) -> Resolution:
    """Resolve each record's tokens to a user id, creating and merging users as needed.

    One person is a connected component of identity values *and* the stored users they
    belong to: values are joined when a record carries both, and through a stored user that
    holds both. So a record matching only a user that another record of the batch merges away
    follows the merge to the survivor, however long the chain, exactly as if the records had
    been resolved one at a time. A record without tokens gets user id 0.
    """
    uf = _UnionFind()
    for toks in tokens:
        if toks:
            uf.find(toks[0])  # registers a record's only token too
        for i in range(1, len(toks)):
            uf.union(toks[0], toks[i])
    distinct: list[Token] = list(dict.fromkeys(t for toks in tokens for t in toks))
    found = w.lookup_identities(project_id, distinct)
    for tok, uid in found.items():
        uf.union(tok, ("user", uid))

    # Users matched by each component.
    component_users: dict[Node, set[int]] = {}
    for tok in distinct:
        users = component_users.setdefault(uf.find(tok), set())
        if tok in found:
            users.add(found[tok])

    result = Resolution(user_ids=[])
    component_user: dict[Node, int] = {}
    need_new = [root for root, users in component_users.items() if not users]
    if need_new:
        first = w.allocate_user_ids(project_id, len(need_new))
        for i, root in enumerate(need_new):
            component_user[root] = first + i
            result.new_users.add(first + i)
    for root, users in component_users.items():
        if not users:
            continue
        survivor = min(users)
        component_user[root] = survivor
        for loser in users:
            if loser != survivor:
                result.merges[loser] = survivor

    if result.merges:
        w.merge_users(project_id, result.merges, user_props)
    # Tokens not yet stored, or stored under a user that was just merged away.
    new_tokens = [tok for tok in distinct if found.get(tok) != component_user[uf.find(tok)]]
    w.insert_identities(project_id, new_tokens, [component_user[uf.find(t)] for t in new_tokens])
    result.user_ids = [component_user[uf.find(toks[0])] if toks else 0 for toks in tokens]
    return result


def matched_users(w: StoreWriter, project_id: int, tokens: Sequence[Token]) -> set[int]:
    """Every user any of ``tokens`` belongs to (nothing is created or merged)."""
    return set(w.lookup_identities(project_id, list(dict.fromkeys(tokens))).values())
