"""Shopping lists (``data/onboarding/shop/shop.lark``) from requests phrased as people write them: the DSL
written for issue 28, whose grammar has ``[...]`` optionals, an inlined ``?rule``, aliases and ``%ignore``.

Its own vocabulary (groceries, amounts in words and digits, units spelt many ways, shops, days) and messy
phrasing (openers, "and" / "plus" / commas, adjectives that become notes, typos). Deterministic for a seed.
``python -m service.demo_data.shop OUT.jsonl [N]`` writes N pairs (default 1,000).
"""

from __future__ import annotations

import random
from functools import partial

from service.demo_data import pairs as demo_pairs

__all__ = ["generate"]

#: (the item as the code writes it, the units it is bought in); the code's item is lower-case words.
_ITEMS = [("milk", "l"), ("oat milk", "l"), ("orange juice", "l"), ("olive oil", "l"), ("water", "l"),
          ("potatoes", "kg"), ("apples", "kg"), ("carrots", "kg"), ("onions", "kg"), ("rice", "kg"),
          ("flour", "kg"), ("sugar", "kg"), ("tomatoes", "kg"), ("bananas", "kg"), ("coffee", "g"),
          ("butter", "g"), ("cheese", "g"), ("ham", "g"), ("tea", "g"), ("yogurt", "g"), ("cream", "ml"),
          ("soy sauce", "ml"), ("vinegar", "ml"), ("eggs", "dozen"), ("pasta", "pack"), ("noodles", "pack"),
          ("toilet paper", "pack"), ("napkins", "pack"), ("batteries", "pack"), ("bread", ""), ("salt", ""),
          ("peanut butter", ""), ("dish soap", ""), ("toothpaste", ""), ("bin bags", ""), ("lemons", ""),
          ("avocados", ""), ("chicken", "kg"), ("salmon", "g"), ("parsley", "bunch"), ("basil", "bunch"),
          ("grapes", "kg"), ("cucumber", ""), ("lettuce", ""), ("garlic", "")]
_NOTES = ["organic", "ripe", "low fat", "gluten free", "unsalted", "fresh", "frozen", "large", "small", "decaf",
          "whole grain", "free range", "sliced", "cheap", "brown"]
_SHOPS = {"lidl": ["lidl"], "aldi": ["aldi"], "tesco": ["tesco"], "costco": ["costco"], "market": ["the market"],
          "bakery": ["the bakery"], "pharmacy": ["the pharmacy", "the chemist"], "butcher": ["the butcher"],
          "store": ["the store", "the shop", "the corner shop"]}
_DAYS = {"mon": ["monday", "mon"], "tue": ["tuesday", "tue"], "wed": ["wednesday", "wed"],
         "thu": ["thursday", "thurs"], "fri": ["friday", "fri"], "sat": ["saturday", "sat"],
         "sun": ["sunday", "sun"], "today": ["today", "tonight"], "tomorrow": ["tomorrow", "tmrw"]}
#: How a unit is said after an amount: (singular, plural) spellings.
_UNIT_WORDS = {"kg": (["kg", "kilo", "kilogram"], ["kg", "kilos", "kilograms", "kgs"]),
               "g": (["g", "gram"], ["g", "grams", "gr"]),
               "l": (["l", "litre", "liter"], ["l", "litres", "liters"]),
               "ml": (["ml"], ["ml", "millilitres"]),
               "pack": (["pack of", "packet of"], ["packs of", "packets of"]),
               "dozen": (["dozen"], ["dozen"]),
               "bunch": (["bunch of"], ["bunches of"])}
_NUMBER_WORDS = {1: ["one", "a", "1"], 2: ["two", "2"], 3: ["three", "3"], 4: ["four", "4"], 5: ["five", "5"],
                 6: ["six", "6"], 10: ["ten", "10"], 12: ["twelve", "12"]}
_OPENERS = ["", "", "buy ", "get ", "pick up ", "grab ", "shopping list: ", "we need ", "i need ",
            "remember to get ", "please buy ", "add "]
_TYPOS = {"tomatoes": "tomatos", "potatoes": "potatos", "bananas": "bannanas", "tomorrow": "tomorow",
          "grams": "gramms", "yogurt": "yoghurt", "litres": "liters", "apples": "aples"}


def _amount(rng: random.Random, unit: str) -> tuple[str, str]:
    """(how the request says it, how the code writes it) for an amount of something bought in ``unit``."""
    if unit in ("kg", "l") and rng.random() < 0.15:
        return rng.choice([f"half a {_UNIT_WORDS[unit][0][1]}", f"0.5 {unit}"]), f"0.5 {unit}"
    if unit == "g":
        n = rng.choice([100, 200, 250, 500])
        return f"{n} {rng.choice(_UNIT_WORDS['g'][1])}", f"{n} g"
    if unit == "ml":
        n = rng.choice([250, 500, 750])
        return f"{n} {rng.choice(_UNIT_WORDS['ml'][1])}", f"{n} ml"
    if unit == "dozen":
        n = rng.choice([1, 1, 2])
        return (rng.choice(["a dozen", "one dozen"]) if n == 1 else "two dozen"), f"{n} dozen"
    n = rng.choice([1, 1, 2, 2, 3, 4, 5, 6]) if unit else rng.choice([1, 2, 2, 3, 4, 6, 10, 12])
    said = rng.choice(_NUMBER_WORDS[n])
    if not unit:
        return said, str(n)
    singular, plural = _UNIT_WORDS[unit]
    code_unit = "packs" if unit == "pack" and n > 1 else unit
    return f"{said} {rng.choice(singular if n == 1 else plural)}", f"{n} {code_unit}"


def _entry(rng: random.Random, name: str, unit: str) -> tuple[str, str]:
    said, code = name, name
    if rng.random() < 0.25:
        note = rng.choice(_NOTES)
        said, code = f"{note} {name}", f"{name} ({note})"
    if rng.random() < 0.7:
        amount_said, amount_code = _amount(rng, unit)
        joiner = " of " if unit in ("kg", "g", "l", "ml") and rng.random() < 0.6 else " "
        said, code = f"{amount_said}{joiner}{said}".replace("of of", "of"), f"{amount_code} {code}"
    return said, code


def _one(rng: random.Random) -> tuple[str, str]:
    said, codes = [], []
    for name, unit in rng.sample(_ITEMS, rng.choice([1, 1, 2, 2, 3, 3, 4])):
        entry_said, entry_code = _entry(rng, name, unit)
        said.append(entry_said)
        codes.append(entry_code)
    text = said[0] if len(said) == 1 else ", ".join(said[:-1]) + rng.choice([" and ", ", ", " plus ", " & "]) \
        + said[-1]
    code = ", ".join(codes)
    if rng.random() < 0.45:
        shop = rng.choice(list(_SHOPS))
        text += f" {rng.choice(['from', 'at', '@'])} {rng.choice(_SHOPS[shop])}"
        code += f" @ {shop}"
    if rng.random() < 0.4:
        day = rng.choice(list(_DAYS))
        spoken = rng.choice(_DAYS[day])
        text += f" {rng.choice(['by', 'before', 'for'])} {spoken}" if day not in ("today", "tomorrow") \
            else f" {rng.choice(['', 'by ', 'for '])}{spoken}"
        code += f" by {day}"
    return text, code


_messy = partial(demo_pairs.roughen, openers=_OPENERS, typos=_TYPOS, endings=[" pls", " thanks", "!", "."])


def generate(n: int, *, seed: int = 0) -> list[dict[str, str]]:
    """``n`` pairs ``{"text", "code"}``."""
    return demo_pairs.generate(n, seed, _one, _messy)


if __name__ == "__main__":
    demo_pairs.main(generate)
