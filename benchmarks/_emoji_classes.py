"""The 72 emoji classes of ``lt_emoji.py``: 9 subcategories of 8 short names (see ``_emoji``)."""

from __future__ import annotations

# (subcategory, emoji short names): 8 visually related emoji per subcategory.
CLASSES: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "animal-mammal",
        ("tiger2", "leopard", "lion_face", "cat2", "dog2", "wolf", "fox_face", "bear"),
    ),
    ("animal-bird", ("rooster", "chicken", "penguin", "eagle", "duck", "owl", "parrot", "swan")),
    (
        "animal-marine",
        ("whale2", "dolphin", "fish", "tropical_fish", "blowfish", "shark", "octopus", "crab"),
    ),
    (
        "food-fruit",
        ("apple", "green_apple", "pear", "peach", "tangerine", "lemon", "cherries", "strawberry"),
    ),
    (
        "food-vegetable",
        (
            "hot_pepper",
            "bell_pepper",
            "corn",
            "eggplant",
            "cucumber",
            "carrot",
            "broccoli",
            "potato",
        ),
    ),
    (
        "food-prepared",
        ("hamburger", "pizza", "hotdog", "taco", "burrito", "sandwich", "bread", "croissant"),
    ),
    (
        "transport-ground",
        ("racing_car", "car", "blue_car", "taxi", "police_car", "bus", "truck", "fire_engine"),
    ),
    (
        "transport-air",
        (
            "airplane",
            "small_airplane",
            "airplane_departure",
            "airplane_arriving",
            "helicopter",
            "rocket",
            "flying_saucer",
            "parachute",
        ),
    ),
    (
        "sport",
        (
            "soccer",
            "basketball",
            "football",
            "rugby_football",
            "volleyball",
            "baseball",
            "softball",
            "tennis",
        ),
    ),
)
# Plain names where the Unicode name is not what a caption would say.
NAME_OVERRIDES = {
    "corn": "corn",
    "eggplant": "eggplant",
    "pizza": "pizza slice",
    "basketball": "basketball",
    "tennis": "tennis ball",
    "blue_car": "recreational vehicle",
}
