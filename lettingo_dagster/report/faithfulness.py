"""How faithful a profile is to the long window it was written from.

A profile can read well and still misstate the user: name films the user never rated, give a
5/5 film "1 out of 5 stars", or call a genre the user rates below their own average a favourite.
Three checks, each the share of a profile's checkable claims that the long window supports:

- titles: of the titles a profile mentions, the share that are in the long window. A mention is
  a span written before a parenthesized year ("Star Wars (1977)", the prompts' and the writers'
  form, matched to the window's titles with rapidfuzz so spelling and article order do not
  matter), a window title written out without a year, or, when a catalog is given, any other
  catalog title of at least two words written out (the titles a profile invents or borrows).
- ratings: of the ratings stated right after a window title ("5/5", "4 out of 5", "3 stars",
  "rated 2"), the share within one point of the user's rating.
- genres: of the genres a sentence says the user likes (enjoys, loves, favourite, keywords, ...)
  or dislikes (dislikes, avoids, not a fan of, ...), the share that the user's ratings back: a
  liked genre's mean rating in the window is at least the user's mean over the whole window, a
  disliked genre's at most. A genre the window does not contain backs nothing.

Rates are None when a profile makes no claim of that kind; aggregates pool the claims of all
profiles and also average the per-profile rates over the profiles that make such claims.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from statistics import mean
from typing import Literal, Protocol

from rapidfuzz import fuzz, process

# A year in parentheses right after a title: "(1977)", "(1977;", "(1977, "; not a range of years
# ("the 1980s (1980-1989)").
_YEAR_ANCHOR = re.compile(r"\(\s*(1[89]\d\d|20\d\d)\b(?!\s*[-–]\s*\d)")
# How far back from a year a title may start, and what ends the text before it.
_SPAN_CHARS = 90
_SPAN_BREAK = re.compile(r"[\n;()\[\]{}\"“”«»•|]")
_MAX_TITLE_WORDS = 12
_ARTICLES = ("the", "a", "an", "il", "la", "le", "les", "l", "el", "das", "der", "die", "lo")
_TRAILING_ARTICLE = re.compile(r"^(.*),\s*(" + "|".join(_ARTICLES) + r")'?$", re.IGNORECASE)
# Ratings are searched this far after a title's mention (never past the next mention, a
# semicolon or a line break).
_RATING_CHARS = 70
# A rating's number, never the tail of a word or number ('Lone Star' is no 'one star').
_NUMBER = r"(?<![\w.])(\d(?:\.\d)?|one|two|three|four|five)"
_RATING_PATTERNS = (
    re.compile(_NUMBER + r"\s*/\s*5\b", re.IGNORECASE),
    re.compile(_NUMBER + r"\s+out\s+of\s+(?:5|five)\b", re.IGNORECASE),
    re.compile(_NUMBER + r"\s*-?\s*stars?\b", re.IGNORECASE),
    re.compile(
        r"\b(?:rated|rating(?:\s+of)?|gave\s+it|gives\s+it|scored)\s*:?\s*"
        + _NUMBER
        + r"\b(?!\s*/\s*10)",
        re.IGNORECASE,
    ),
)
_WORD_NUMBERS = {"one": 1.0, "two": 2.0, "three": 3.0, "four": 4.0, "five": 5.0}
_MAX_RATING = 5.0

# Genre names as profiles write them, by the genre names datasets use (MovieLens's, mostly).
_GENRE_FORMS: dict[str, tuple[str, ...]] = {
    "action": ("action",),
    "adventure": ("adventures?",),
    "animation": ("animation", "animated", "cartoons?"),
    "children's": ("children'?s?", "kids", "family"),
    "comedy": ("comed(?:y|ies)", "comedic"),
    "crime": ("crime",),
    "documentary": ("documentar(?:y|ies)",),
    "drama": ("dramas?", "dramatic"),
    "fantasy": ("fantas(?:y|ies)",),
    "film-noir": ("film[- ]noir", "noir"),
    "horror": ("horror",),
    "musical": ("musicals?",),
    "mystery": ("myster(?:y|ies)",),
    "romance": ("romances?", "romantic"),
    "sci-fi": ("sci[- ]?fi", "science[- ]fiction"),
    "thriller": ("thrillers?",),
    "war": ("war",),
    "western": ("westerns?",),
}
_NEGATIVE_CUES = re.compile(
    r"(?:\b(?:not|never|rarely|seldom)|n't)\s+(?:\w+\s+)?(?:like|likes|enjoy\w*|love\w*|care\w*|into)\b"
    r"|\b(?:dislik\w*|hat(?:e|es|ed|ing)|avoid\w*|not\s+(?:a\s+)?(?:big\s+)?fan|not\s+fond"
    r"|low(?:ly)?[- ]rated|least\s+(?:favou?rite|liked|enjoyed)|steers?\s+clear|turn(?:s|ed)?\s+off"
    r"|harsh\s+on)\b",
    re.IGNORECASE,
)
_POSITIVE_CUES = re.compile(
    r"\b(?:lik(?:e|es|ed|ing)|lov(?:e|es|ed|ing)|enjoy\w*|favou?rite\w*|fan\s+of|prefer\w*"
    r"|keywords?|high(?:ly)?[- ]rated|appreciat\w*|drawn\s+to|fond\s+of|passion\s+for"
    r"|taste\s+for|interest(?:ed)?\s+in|adores?|gravitates?\s+to\w*)\b",
    re.IGNORECASE,
)
# Words that mark a genre as neither liked nor disliked ("close to their average on Drama").
_NEUTRAL_CUES = re.compile(
    r"\b(?:average|neutral|mixed|indifferent|middling|so-so|moderate\w*)\b", re.IGNORECASE
)
_SENTENCE_END = re.compile(r"[.!?\n]")
_PARENTHESIZED = re.compile(r"\([^()]*\)")

# Lower-case words inside titles ('Return of the Jedi', 'Crime and Punishment').
_TITLE_SMALL_WORDS = frozenset(
    {"a", "an", "and", "at", "by", "for", "from", "in", "of", "on", "or", "the", "to", "with"}
)

Polarity = Literal["liked", "disliked"]


class WindowItem(Protocol):
    """What the checks read of a long-window item (exploration.history.RatedItem has it)."""

    @property
    def title(self) -> str: ...
    @property
    def year(self) -> int | None: ...
    @property
    def genres(self) -> Sequence[str]: ...
    @property
    def rating(self) -> float: ...


@dataclass(frozen=True)
class TitleMention:
    text: str  # the profile's words for it (for an unmatched year-anchored span, the whole span)
    start: int
    end: int  # where a rating stated for it may begin
    window_index: int | None  # the long-window item it names, None when none
    score: float  # rapidfuzz similarity of the match (100 for exact ones)

    @property
    def in_window(self) -> bool:
        return self.window_index is not None


@dataclass(frozen=True)
class RatingClaim:
    title: str  # the window item's title
    stated: float
    actual: float

    @property
    def agrees(self) -> bool:
        return abs(self.stated - self.actual) <= 1.0


@dataclass(frozen=True)
class GenreClaim:
    genre: str  # as the window spells it, or the canonical name when the window lacks it
    polarity: Polarity
    genre_mean: float | None  # the user's mean rating of the genre's window items
    user_mean: float

    @property
    def agrees(self) -> bool:
        if self.genre_mean is None:
            return False
        if self.polarity == "liked":
            return self.genre_mean >= self.user_mean
        return self.genre_mean <= self.user_mean


def _share(hits: int, total: int) -> float | None:
    return hits / total if total else None


@dataclass(frozen=True)
class ProfileFaithfulness:
    titles: tuple[TitleMention, ...]
    ratings: tuple[RatingClaim, ...]
    genres: tuple[GenreClaim, ...]

    @property
    def title_rate(self) -> float | None:
        """Share of the mentioned titles that are in the long window."""
        return _share(sum(m.in_window for m in self.titles), len(self.titles))

    @property
    def rating_rate(self) -> float | None:
        """Share of the stated ratings within one point of the user's."""
        return _share(sum(r.agrees for r in self.ratings), len(self.ratings))

    def _genre_claims(self, polarity: Polarity) -> list[GenreClaim]:
        return [claim for claim in self.genres if claim.polarity == polarity]

    @property
    def liked_genre_rate(self) -> float | None:
        claims = self._genre_claims("liked")
        return _share(sum(c.agrees for c in claims), len(claims))

    @property
    def disliked_genre_rate(self) -> float | None:
        claims = self._genre_claims("disliked")
        return _share(sum(c.agrees for c in claims), len(claims))

    def as_row(self) -> dict[str, float | int | None]:
        """Counts and rates as one flat row (a DataFrame row per profile)."""
        liked, disliked = self._genre_claims("liked"), self._genre_claims("disliked")
        return {
            "titles_mentioned": len(self.titles),
            "titles_in_window": sum(m.in_window for m in self.titles),
            "title_rate": self.title_rate,
            "ratings_stated": len(self.ratings),
            "ratings_within_one": sum(r.agrees for r in self.ratings),
            "rating_rate": self.rating_rate,
            "liked_genres_stated": len(liked),
            "liked_genres_matching": sum(c.agrees for c in liked),
            "liked_genre_rate": self.liked_genre_rate,
            "disliked_genres_stated": len(disliked),
            "disliked_genres_matching": sum(c.agrees for c in disliked),
            "disliked_genre_rate": self.disliked_genre_rate,
        }


@dataclass(frozen=True)
class ClaimRate:
    """One kind of claim over many profiles."""

    claims: int
    supported: int
    profiles_with_claims: int
    mean_profile_rate: float | None  # the per-profile rates averaged over those profiles

    @property
    def rate(self) -> float | None:
        """Pooled: supported claims over all claims."""
        return _share(self.supported, self.claims)


@dataclass(frozen=True)
class FaithfulnessSummary:
    profiles: int
    titles: ClaimRate
    ratings: ClaimRate
    liked_genres: ClaimRate
    disliked_genres: ClaimRate

    def as_dict(self) -> dict[str, float | int | None]:
        out: dict[str, float | int | None] = {"profiles": self.profiles}
        for name in ("titles", "ratings", "liked_genres", "disliked_genres"):
            claim: ClaimRate = getattr(self, name)
            out[f"{name}_claims"] = claim.claims
            out[f"{name}_supported"] = claim.supported
            out[f"{name}_rate"] = claim.rate
            out[f"{name}_profiles"] = claim.profiles_with_claims
            out[f"{name}_mean_profile_rate"] = claim.mean_profile_rate
        return out


def _claim_rate(per_profile: Sequence[tuple[int, int]]) -> ClaimRate:
    """(supported, claims) per profile -> pooled and per-profile-mean rates."""
    rates = [hits / total for hits, total in per_profile if total]
    return ClaimRate(
        claims=sum(total for _, total in per_profile),
        supported=sum(hits for hits, _ in per_profile),
        profiles_with_claims=len(rates),
        mean_profile_rate=mean(rates) if rates else None,
    )


def summarize(results: Iterable[ProfileFaithfulness]) -> FaithfulnessSummary:
    """Aggregate rates over profiles (say, one generator's profiles of all test users)."""
    rows = [result.as_row() for result in results]

    def pairs(hit_key: str, total_key: str) -> list[tuple[int, int]]:
        return [(int(row[hit_key] or 0), int(row[total_key] or 0)) for row in rows]

    return FaithfulnessSummary(
        profiles=len(rows),
        titles=_claim_rate(pairs("titles_in_window", "titles_mentioned")),
        ratings=_claim_rate(pairs("ratings_within_one", "ratings_stated")),
        liked_genres=_claim_rate(pairs("liked_genres_matching", "liked_genres_stated")),
        disliked_genres=_claim_rate(pairs("disliked_genres_matching", "disliked_genres_stated")),
    )


# ---------------------------------------------------------------------------- normalization


def normalize_title(title: str) -> str:
    """Lower case words without punctuation, a trailing article moved away and a leading one
    dropped: 'Empire Strikes Back, The' and 'The Empire Strikes Back' both give
    'empire strikes back'."""
    text = " ".join(title.split())
    moved = _TRAILING_ARTICLE.match(text)
    if moved:
        text = moved.group(1)
    words = re.sub(r"[^0-9a-z]+", " ", text.lower()).split()
    if len(words) > 1 and words[0] in _ARTICLES:
        words = words[1:]
    return " ".join(words)


def title_aliases(title: str) -> tuple[str, ...]:
    """A title's normalized forms: the whole title without parenthesized parts, and each
    parenthesized alternative ('Manon of the Spring (Manon des sources)' has two; 'Star Wars
    (1977)' keeps only 'star wars')."""
    main = normalize_title(_PARENTHESIZED.sub(" ", title))
    alternatives = [
        normalize_title(part[1:-1])
        for part in _PARENTHESIZED.findall(title)
        if not re.fullmatch(r"\(\s*\d{4}\s*\)", part)
    ]
    out: list[str] = []
    for alias in (main, *alternatives):
        alias = re.sub(r"^a k a ", "", alias)
        if alias and alias not in out:
            out.append(alias)
    return tuple(out)


@dataclass(frozen=True)
class _NormalizedText:
    """Text folded like titles (lower case, runs of other characters one space), with each
    character's position in the original text."""

    text: str
    origin: tuple[int, ...]

    @classmethod
    def of(cls, raw: str) -> _NormalizedText:
        chars: list[str] = []
        origin: list[int] = []
        for index, char in enumerate(raw):
            lowered = char.lower()
            if lowered.isascii() and lowered.isalnum():
                chars.append(lowered)
                origin.append(index)
            elif chars and chars[-1] != " ":
                chars.append(" ")
                origin.append(index)
        return cls("".join(chars), tuple(origin))

    def span(self, start: int, end: int) -> tuple[int, int]:
        """The original text's span of normalized characters [start, end)."""
        return self.origin[start], self.origin[end - 1] + 1


def _phrase_pattern(phrase: str) -> re.Pattern[str]:
    return re.compile(r"(?<![0-9a-z])" + re.escape(phrase) + r"(?![0-9a-z])")


# ---------------------------------------------------------------------------- the scorer


@dataclass
class FaithfulnessScorer:
    """Checks profiles against long windows; build once, score many.

    `catalog`: every title of the dataset (optional). With it, a profile's mention of a catalog
    title outside the window counts even without a year; without it only year-anchored spans can
    reveal titles that are not in the window. `genres`: extra genre names to recognize beyond
    MovieLens's and those in each window. `min_title_score`: the rapidfuzz ratio (0-100) from
    which a year-anchored span names a window title.
    """

    catalog: Sequence[str] = ()
    genres: Sequence[str] = ()
    min_title_score: float = 88.0
    _catalog_aliases: dict[str, str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # Catalog titles spotted without a year must be specific enough not to be everyday
        # words ('Heat', 'Big', 'Speed'): at least two words and eight characters.
        self._catalog_aliases = {}
        for title in self.catalog:
            for alias in title_aliases(title):
                if len(alias.split()) >= 2 and len(alias) >= 8:
                    self._catalog_aliases.setdefault(alias, title)

    def score(self, profile: str, window: Sequence[WindowItem]) -> ProfileFaithfulness:
        titles = self._title_mentions(profile, window)
        ratings = _rating_claims(profile, titles, window)
        genres = self._genre_claims(profile, titles, window)
        return ProfileFaithfulness(titles=titles, ratings=ratings, genres=genres)

    def score_all(
        self, profiles: Sequence[str], windows: Sequence[Sequence[WindowItem]]
    ) -> list[ProfileFaithfulness]:
        """profiles[i] against windows[i]."""
        if len(profiles) != len(windows):
            raise ValueError(f"{len(profiles)} profiles but {len(windows)} windows")
        return [self.score(text, window) for text, window in zip(profiles, windows, strict=True)]

    # ------------------------------------------------------------------------ titles

    def _title_mentions(
        self, profile: str, window: Sequence[WindowItem]
    ) -> tuple[TitleMention, ...]:
        aliases = [
            (alias, index)
            for index, item in enumerate(window)
            for alias in title_aliases(item.title)
        ]
        mentions: list[TitleMention] = []
        taken: list[tuple[int, int]] = []  # spans already claimed by a mention

        def overlaps(start: int, end: int) -> bool:
            return any(start < t_end and t_start < end for t_start, t_end in taken)

        for anchor in _YEAR_ANCHOR.finditer(profile):
            mention = self._anchored_mention(profile, anchor, aliases)
            if mention is not None and not overlaps(mention.start, anchor.start()):
                mentions.append(mention)
                taken.append((mention.start, mention.end))

        normalized = _NormalizedText.of(profile)
        for alias, index in sorted(aliases, key=lambda a: -len(a[0])):
            if len(alias) < 4:  # 'It', 'Go': too short to spot in free text
                continue
            for found in _phrase_pattern(alias).finditer(normalized.text):
                start, end = normalized.span(found.start(), found.end())
                if not overlaps(start, end):
                    mentions.append(TitleMention(profile[start:end], start, end, index, 100.0))
                    taken.append((start, end))

        window_aliases = {alias for alias, _ in aliases}
        for alias in sorted(self._catalog_aliases, key=len, reverse=True):
            if alias in window_aliases or alias not in normalized.text:
                continue
            for found in _phrase_pattern(alias).finditer(normalized.text):
                start, end = normalized.span(found.start(), found.end())
                if not overlaps(start, end):
                    mentions.append(TitleMention(profile[start:end], start, end, None, 100.0))
                    taken.append((start, end))

        # One mention per window title (or per distinct unknown title), in reading order.
        seen: set[object] = set()
        unique = []
        for mention in sorted(mentions, key=lambda m: m.start):
            key = mention.window_index if mention.in_window else normalize_title(mention.text)
            if key not in seen:
                seen.add(key)
                unique.append(mention)
        return tuple(unique)

    def _anchored_mention(
        self, profile: str, anchor: re.Match[str], aliases: Sequence[tuple[str, int]]
    ) -> TitleMention | None:
        """The title written before a '(year': the best-matching window title among the span's
        trailing word runs, or the span itself when none matches."""
        lower = max(0, anchor.start() - _SPAN_CHARS)
        before = profile[lower : anchor.start()]
        breaks = list(_SPAN_BREAK.finditer(before))
        offset = lower + (breaks[-1].end() if breaks else 0)
        span = profile[offset : anchor.start()]
        words = list(re.finditer(r"\S+", span))
        if not words:
            return None
        end = _anchor_end(profile, anchor)
        choices = [alias for alias, _ in aliases]
        best: tuple[float, int, int] | None = None  # (score, first word, window index)
        if choices:
            for first in range(max(0, len(words) - _MAX_TITLE_WORDS), len(words)):
                candidate = normalize_title(span[words[first].start() :])
                if len(candidate) < 2:
                    continue
                match = process.extractOne(candidate, choices, scorer=fuzz.ratio)
                # On a tie the shorter tail wins: '- Fargo' and 'Fargo' both match 'Fargo'.
                if match is not None and (best is None or match[1] >= best[0]):
                    best = (match[1], first, aliases[match[2]][1])
        if best is not None and best[0] >= self.min_title_score:
            start = offset + words[best[1]].start()
            return TitleMention(
                profile[start : anchor.start()].strip(), start, end, best[2], best[0]
            )
        guessed = _capitalized_tail(span, words)
        if guessed is None:  # '(1980-1989)' after 'the 1980s': a year, but no title before it
            return None
        start = offset + guessed
        text = self._catalog_name(span) or profile[start : anchor.start()].strip()
        return TitleMention(text, start, end, None, best[0] if best else 0.0)

    def _catalog_name(self, span: str) -> str | None:
        """The catalog title the span's tail names, if any (so one invented title mentioned
        twice, or in two spellings, counts once)."""
        if not self._catalog_aliases:
            return None
        words = span.split()
        choices = list(self._catalog_aliases)
        for first in range(max(0, len(words) - _MAX_TITLE_WORDS), len(words)):
            candidate = normalize_title(" ".join(words[first:]))
            match = process.extractOne(
                candidate, choices, scorer=fuzz.ratio, score_cutoff=self.min_title_score
            )
            if match is not None:
                return self._catalog_aliases[match[0]]
        return None

    # ------------------------------------------------------------------------ genres

    def _genre_patterns(self, window: Sequence[WindowItem]) -> list[tuple[str, re.Pattern[str]]]:
        """(genre as the window spells it, pattern of its written forms), longest forms first."""
        spelled = {g.lower(): g for item in window for g in item.genres}
        for extra in self.genres:
            spelled.setdefault(extra.lower(), extra)
        forms: dict[str, set[str]] = {}
        for key, name in spelled.items():
            forms.setdefault(name, set()).add(re.escape(key) + "s?")
        for canonical, written in _GENRE_FORMS.items():
            # The window's own spelling of this genre ('Science Fiction' for sci-fi), if any.
            name = next(
                (
                    spelled[key]
                    for key in spelled
                    if key == canonical or any(re.fullmatch(w, key) for w in written)
                ),
                canonical,
            )
            forms.setdefault(name, set()).update(written)
        return [
            (
                name,
                re.compile(
                    r"(?<![\w-])(?:" + "|".join(sorted(f, key=len, reverse=True)) + r")(?![\w-])",
                    re.IGNORECASE,
                ),
            )
            for name, f in forms.items()
        ]

    def _genre_claims(
        self, profile: str, titles: Sequence[TitleMention], window: Sequence[WindowItem]
    ) -> tuple[GenreClaim, ...]:
        if not window:
            return ()
        # Titles ('Crime and Punishment') and parenthesized asides ('(5 rated, avg 4.2)', a
        # film's genre list) are no statements about taste: blank them, keeping positions.
        chars = list(profile)
        for mention in titles:
            for k in range(mention.start, min(mention.end, len(chars))):
                chars[k] = " "
        text = "".join(chars)
        while True:
            blanked = _PARENTHESIZED.sub(lambda m: " " * len(m.group()), text)
            if blanked == text:
                break
            text = blanked

        user_mean = mean(item.rating for item in window)
        ratings_by_genre: dict[str, list[float]] = {}
        for item in window:
            for genre in item.genres:
                ratings_by_genre.setdefault(genre, []).append(item.rating)
        patterns = self._genre_patterns(window)

        claims: dict[tuple[str, Polarity], GenreClaim] = {}
        sentence_start = 0
        for end_match in [*_SENTENCE_END.finditer(text), None]:
            sentence_end = end_match.start() if end_match else len(text)
            sentence = text[sentence_start:sentence_end]
            sentence_start = sentence_end + 1
            cues = _cues(sentence)
            if not cues:
                continue
            for name, pattern in patterns:
                for found in pattern.finditer(sentence):
                    polarity = _polarity_at(cues, found.start())
                    if polarity is None:
                        continue
                    ratings = ratings_by_genre.get(name)
                    claims.setdefault(
                        (name, polarity),
                        GenreClaim(name, polarity, mean(ratings) if ratings else None, user_mean),
                    )
        return tuple(claims.values())


def _capitalized_tail(span: str, words: Sequence[re.Match[str]]) -> int | None:
    """Where an unknown title before a year probably starts: the run of capitalized words (and
    the small words titles have inside) that ends the span, as in 'loves films like The Dark
    Pool (1999)'. None when the span does not end in a capitalized word."""
    first: int | None = None
    for k in range(len(words) - 1, -1, -1):
        word = words[k].group().strip(",:'\"")
        if word[:1].isupper() or word[:1].isdigit():
            first = k
        elif word.lower() not in _TITLE_SMALL_WORDS:
            break
    return words[first].start() if first is not None else None


def _anchor_end(profile: str, anchor: re.Match[str]) -> int:
    """Where a rating for an anchored title may begin: after its parenthesized group when that
    closes soon ('(1977; Action, Sci-Fi): like, 5/5'), else right after the year."""
    close = profile.find(")", anchor.end(), anchor.end() + 120)
    newline = profile.find("\n", anchor.end(), anchor.end() + 120)
    if close != -1 and (newline == -1 or close < newline):
        return close + 1
    return anchor.end()


def _cues(sentence: str) -> list[tuple[int, Polarity | None]]:
    """(position, polarity) of every taste cue in a sentence; None marks a neutral one. A
    negated like ('does not enjoy') is a dislike, never also a like."""
    negative = [(m.start(), m.end()) for m in _NEGATIVE_CUES.finditer(sentence)]
    cues: list[tuple[int, Polarity | None]] = [(start, "disliked") for start, _ in negative]
    for found in _POSITIVE_CUES.finditer(sentence):
        if not any(start <= found.start() < end for start, end in negative):
            cues.append((found.start(), "liked"))
    cues.extend((m.start(), None) for m in _NEUTRAL_CUES.finditer(sentence))
    return sorted(cues)


def _polarity_at(cues: Sequence[tuple[int, Polarity | None]], position: int) -> Polarity | None:
    """The nearest cue before a genre ('Enjoys Drama and War'), else the first after it
    ('Horror is what they dislike')."""
    before = [polarity for start, polarity in cues if start < position]
    if before:
        return before[-1]
    after = [polarity for start, polarity in cues if start > position]
    return after[0] if after else None


# ---------------------------------------------------------------------------- ratings


def _parse_rating(text: str) -> float | None:
    value = _WORD_NUMBERS.get(text.lower())
    if value is None:
        try:
            value = float(text)
        except ValueError:
            return None
    return value if 0 <= value <= _MAX_RATING else None


def _rating_claims(
    profile: str, titles: Sequence[TitleMention], window: Sequence[WindowItem]
) -> tuple[RatingClaim, ...]:
    """The first rating stated after each window title, before the next mention."""
    ordered = sorted(titles, key=lambda m: m.start)
    claims = []
    for k, mention in enumerate(ordered):
        if mention.window_index is None:
            continue
        limit = mention.end + _RATING_CHARS
        if k + 1 < len(ordered):
            limit = min(limit, ordered[k + 1].start)
        region = profile[mention.end : max(mention.end, limit)]
        # A rating belongs to its title's clause: 'drama (Lone Star); thriller (...)'.
        region = re.split(r"[;\n]", region, maxsplit=1)[0]
        found = [m for pattern in _RATING_PATTERNS for m in pattern.finditer(region)]
        if not found:
            continue
        first = min(found, key=lambda m: m.start())
        stated = _parse_rating(first.group(1))
        if stated is None:
            continue
        item = window[mention.window_index]
        claims.append(RatingClaim(title=item.title, stated=stated, actual=float(item.rating)))
    return tuple(claims)


def score_profiles(
    profiles: Sequence[str],
    windows: Sequence[Sequence[WindowItem]],
    *,
    catalog: Sequence[str] = (),
) -> list[ProfileFaithfulness]:
    """profiles[i] checked against windows[i] (see the module's docstring for the checks)."""
    return FaithfulnessScorer(catalog=catalog).score_all(profiles, windows)


def summarize_by(
    groups: Mapping[str, Sequence[ProfileFaithfulness]],
) -> dict[str, FaithfulnessSummary]:
    """One summary per group (generator, before / after DPO)."""
    return {name: summarize(results) for name, results in groups.items()}
