"""A resolved @context as plain dictionaries: term ⇄ IRI lookups with no JSON-LD algorithm per call."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

_MAX_MEMO = 50_000  # memoised expansions/compactions per TermMap; beyond this we compute without storing


class TermMap:
    """Term ⇄ IRI lookups for one @context value, built once from pyld's processed active context.

    `expand`/`compact` follow JSON-LD 1.1 IRI expansion and compaction with `vocab=true`: exact
    term, then `@vocab`, then compact IRIs (`prefix:suffix`), else the string itself.
    """

    __slots__ = ("_compacted", "_expanded", "_iri_to_term", "_prefixes", "_terms", "_type_coercions", "context",
                 "vocab")

    def __init__(
        self,
        context: Any,
        terms: Mapping[str, str],
        prefixes: Mapping[str, str],
        vocab: str | None,
        type_coercions: Mapping[str, str] | None = None,
    ) -> None:
        self.context = context
        """The @context value to echo in responses (`@context` member or Link header)."""
        self.vocab = vocab
        self._terms: dict[str, str] = dict(terms)
        self._prefixes: dict[str, str] = dict(prefixes)
        self._type_coercions: dict[str, str] = dict(type_coercions or {})
        self._iri_to_term: dict[str, str] = {}
        for term, iri in self._terms.items():
            if iri.startswith("@"):
                continue
            known = self._iri_to_term.get(iri)
            if known is None or (len(term), term) < (len(known), known):
                self._iri_to_term[iri] = term
        self._expanded: dict[str, str] = {}
        self._compacted: dict[str, str] = {}

    @classmethod
    def from_active_context(cls, context: Any, *active_contexts: Mapping[str, Any]) -> TermMap:
        """Merge pyld active contexts, later ones winning term by term (the core context comes last).

        The first `@vocab` found wins, so a user's `@vocab` is respected over the core's default.
        """
        terms: dict[str, str] = {}
        prefixes: dict[str, str] = {}
        coercions: dict[str, str] = {}
        vocab: str | None = None
        for active in active_contexts:
            if vocab is None and active.get("@vocab"):
                vocab = str(active["@vocab"])
            for term, definition in active.get("mappings", {}).items():
                if not definition or definition.get("reverse") or "@id" not in definition:
                    # A term mapped to null hides it; reverse properties do not name NGSI-LD attributes.
                    terms.pop(term, None)
                    prefixes.pop(term, None)
                    coercions.pop(term, None)
                    continue
                iri = str(definition["@id"])
                terms[term] = iri
                if definition.get("_prefix"):
                    prefixes[term] = iri
                else:
                    prefixes.pop(term, None)
                if "@type" in definition:
                    coercions[term] = str(definition["@type"])
                else:
                    coercions.pop(term, None)
        return cls(context, terms, prefixes, vocab, coercions)

    def __repr__(self) -> str:
        return f"TermMap({len(self._terms)} terms, vocab={self.vocab!r}, context={self.context!r:.80})"

    def __contains__(self, term: object) -> bool:
        return term in self._terms

    @property
    def terms(self) -> Mapping[str, str]:
        """All defined terms and their IRIs (read-only view)."""
        return self._terms

    def expand(self, term: str) -> str:
        """The IRI a term (attribute name, type, `prefix:suffix` or absolute IRI) stands for."""
        memo = self._expanded.get(term)
        if memo is not None:
            return memo
        iri = self._expand(term)
        if len(self._expanded) < _MAX_MEMO:
            self._expanded[term] = iri
        return iri

    def _expand(self, term: str) -> str:
        iri = self._terms.get(term)
        if iri is not None:
            return iri
        prefix, colon, suffix = term.partition(":")
        if colon:
            # JSON-LD 1.1 5.2.2 (IRI expansion): any defined term may serve as a prefix when expanding;
            # blank nodes and absolute IRIs (`urn:`, `https://`) stay as they are.
            if prefix != "_" and not suffix.startswith("//"):
                prefix_iri = self._terms.get(prefix)
                if prefix_iri is not None and not prefix_iri.startswith("@"):
                    return prefix_iri + suffix
            return term
        if self.vocab is not None:
            return self.vocab + term
        return term

    def compact(self, iri: str) -> str:
        """The shortest term for an IRI, else a vocab-relative or compact IRI, else the IRI itself."""
        memo = self._compacted.get(iri)
        if memo is not None:
            return memo
        term = self._compact(iri)
        if len(self._compacted) < _MAX_MEMO:
            self._compacted[iri] = term
        return term

    def _compact(self, iri: str) -> str:
        term = self._iri_to_term.get(iri)
        if term is not None:
            return term
        vocab = self.vocab
        if vocab and iri.startswith(vocab) and len(iri) > len(vocab):
            suffix = iri[len(vocab):]
            if ":" not in suffix and suffix not in self._terms:
                return suffix
        best: str | None = None
        for prefix, prefix_iri in self._prefixes.items():
            if len(iri) > len(prefix_iri) and iri.startswith(prefix_iri):
                candidate = f"{prefix}:{iri[len(prefix_iri):]}"
                if candidate in self._terms and self._terms[candidate] != iri:
                    continue
                if best is None or (len(candidate), candidate) < (len(best), best):
                    best = candidate
        return best if best is not None else iri

    def expand_type(self, term: str) -> str:
        """The IRI an entity type name stands for (types are vocab-relative, like attribute names)."""
        return self.expand(term)

    def compact_type(self, iri: str) -> str:
        """The short name of an entity type IRI under this context."""
        return self.compact(iri)

    def type_coercion(self, term: str) -> str | None:
        """The term's `@type` in the context (`@id`, `@vocab`, a datatype IRI), if any."""
        return self._type_coercions.get(term)
