"""The ODinW-35 table: one record per set, transcribed from the official task configs.

Source: microsoft/GLIP configs/odinw_35/*.yaml (``DATASETS.REGISTER``, ``OVERRIDE_CATEGORY``,
``CAPTION_PROMPT``, ``TEST``) and configs/odinw_13/*.yaml (the 13 sets of the GLIP paper; same
folders and category overrides, but no ``CAPTION_PROMPT``). Class lists appear here only because
the official configs override the json's category names (``OVERRIDE_CATEGORY``, by id 1..N);
the json still decides which ids exist (glip_d2/data/datasets/odinw.py checks them).

Folder layouts under ``$DETECTRON2_DATASETS``:

* ``"split_dirs"``: ``{root}/{train,valid,test,mini_val}/annotations_without_background.json``,
  images next to the json, k-shot files ``{split dir}/fewshot_{split}_shot{k}_seed{s}.json``.
* ``"flat"``: one ``{root}`` folder with every image, ``{root}/{train,val,test}_annotations_
  without_background.json`` and ``{root}/fewshot_train_shot{k}_seed{s}.json``.
"""

from typing import NamedTuple

__all__ = ["ODINW_SETS", "OdinwSet"]


class OdinwSet(NamedTuple):
    name: str  # the official config's file stem
    root: str  # folder under $DETECTRON2_DATASETS
    eval_split: str  # the official config's DATASETS.TEST: "val" or "minival"
    odinw13: bool  # one of the 13 sets of configs/odinw_13
    categories: tuple  # OVERRIDE_CATEGORY names of json ids 1..N
    caption_prompt: tuple = ()  # odinw_35 CAPTION_PROMPT: (prefix, name, suffix) per category
    layout: str = "split_dirs"
    test_dir: str = "test"  # PascalVOC has no test folder; its "test" is the valid folder


_AERIAL = ("boat", "car", "dock", "jetski", "lift")

ODINW_SETS = [
    OdinwSet("AerialMaritimeDrone_large", "odinw/AerialMaritimeDrone/large", "val", True, _AERIAL),
    OdinwSet("AerialMaritimeDrone_tiled", "odinw/AerialMaritimeDrone/tiled", "val", False, _AERIAL),
    OdinwSet(
        "AmericanSignLanguageLetters_American_Sign_Language_Letters.v1-v1.coco",
        "odinw/AmericanSignLanguageLetters/American Sign Language Letters.v1-v1.coco",
        "val",
        False,
        tuple("ABCDEFGHIJKLMNOPQRSTUVWXYZ"),
    ),
    OdinwSet(
        "Aquarium_Aquarium_Combined.v2-raw-1024.coco",
        "odinw/Aquarium/Aquarium Combined.v2-raw-1024.coco",
        "val",
        True,
        ("fish", "jellyfish", "penguin", "puffin", "shark", "starfish", "stingray"),
        (
            (" ", "fish", ""),
            ("", "jellyfish", ""),
            ("", "penguin", " , which is black and white"),
            ("", "puffin", " with orange beaks "),
            ("", "shark", ""),
            ("", "starfish", ""),
            ("", "stingray", " which is flat and round"),
        ),
    ),
    OdinwSet(
        "BCCD_BCCD.v3-raw.coco",
        "odinw/BCCD/BCCD.v3-raw.coco",
        "val",
        False,
        ("Platelets", "RBC", "WBC"),
    ),  # fmt: skip
    OdinwSet(
        "ChessPieces_Chess_Pieces.v23-raw.coco",
        "odinw/ChessPieces/Chess Pieces.v23-raw.coco",
        "val",
        False,
        # id 1 is blanked by the official override; glip_d2 keeps the json's name for it
        ("  ",)
        + tuple(
            f"{c} {p}"
            for c in ("black", "white")
            for p in ("bishop", "king", "knight", "pawn", "queen", "rook")
        ),
    ),  # fmt: skip
    OdinwSet("CottontailRabbits", "odinw/CottontailRabbits", "val", True, ("rabbit",)),
    OdinwSet(
        "DroneControl_Drone_Control.v3-raw.coco",
        "odinw/DroneControl/Drone Control.v3-raw.coco",
        "minival",
        False,
        ("follow", "follow_hand", "land", "land_hand", "null", "object", "takeoff", "takeoff-hand"),
    ),  # fmt: skip
    OdinwSet(
        "EgoHands_generic",
        "odinw/EgoHands/generic",
        "minival",
        True,
        ("hand",),
        ((" ", "hand", " of a person"),),
    ),  # fmt: skip
    OdinwSet(
        "EgoHands_specific",
        "odinw/EgoHands/specific",
        "minival",
        False,
        ("myleft", "myright", "yourleft", "yourright"),
    ),  # fmt: skip
    OdinwSet(
        "HardHatWorkers_raw",
        "odinw/HardHatWorkers/raw",
        "val",
        False,
        ("head", "helmet", "person"),
    ),  # fmt: skip
    OdinwSet("MaskWearing_raw", "odinw/MaskWearing/raw", "val", False, ("mask", "no-mask")),
    OdinwSet("MountainDewCommercial", "odinw/MountainDewCommercial", "val", False, ("bottle",)),
    OdinwSet(
        "NorthAmericaMushrooms_North_American_Mushrooms.v1-416x416.coco",
        "odinw/NorthAmericaMushrooms/North American Mushrooms.v1-416x416.coco",
        "val",
        True,
        ("flat mushroom", "yellow mushroom"),
    ),
    OdinwSet(
        "OxfordPets_by-breed",
        "odinw/OxfordPets/by-breed",
        "minival",
        False,
        tuple(
            f"cat-{b}"
            for b in (
                "Abyssinian",
                "Bengal",
                "Birman",
                "Bombay",
                "British_Shorthair",
                "Egyptian_Mau",
                "Maine_Coon",
                "Persian",
                "Ragdoll",
                "Russian_Blue",
                "Siamese",
                "Sphynx",
            )
        )
        + tuple(
            f"dog-{b}"
            for b in (
                "american_bulldog",
                "american_pit_bull_terrier",
                "basset_hound",
                "beagle",
                "boxer",
                "chihuahua",
                "english_cocker_spaniel",
                "english_setter",
                "german_shorthaired",
                "great_pyrenees",
                "havanese",
                "japanese_chin",
                "keeshond",
                "leonberger",
                "miniature_pinscher",
                "newfoundland",
                "pomeranian",
                "pug",
                "saint_bernard",
                "samoyed",
                "scottish_terrier",
                "shiba_inu",
                "staffordshire_bull_terrier",
                "wheaten_terrier",
                "yorkshire_terrier",
            )
        ),
    ),  # fmt: skip
    OdinwSet(
        "OxfordPets_by-species",
        "odinw/OxfordPets/by-species",
        "minival",
        False,
        ("cat", "dog"),
    ),  # fmt: skip
    OdinwSet(
        "PKLot_640",
        "odinw/PKLot/640",
        "minival",
        False,
        ("space-empty", "space-occupied"),
    ),  # fmt: skip
    OdinwSet(
        "Packages_Raw",
        "odinw/Packages/Raw",
        "val",
        True,
        ("package",),
        (("there is a ", "package", " on the porch"),),
    ),  # fmt: skip
    OdinwSet(
        "PascalVOC",
        "odinw/PascalVOC",
        "val",
        True,
        (
            "aeroplane",
            "bicycle",
            "bird",
            "boat",
            "bottle",
            "bus",
            "car",
            "cat",
            "chair",
            "cow",
            "diningtable",
            "dog",
            "horse",
            "motorbike",
            "person",
            "pottedplant",
            "sheep",
            "sofa",
            "train",
            "tvmonitor",
        ),
        test_dir="valid",
    ),  # fmt: skip
    OdinwSet(
        "Raccoon_Raccoon.v2-raw.coco",
        "odinw/Raccoon/Raccoon.v2-raw.coco",
        "val",
        True,
        ("raccoon",),
    ),  # fmt: skip
    OdinwSet(
        "ShellfishOpenImages_raw",
        "odinw/ShellfishOpenImages/raw",
        "val",
        True,
        ("Crab", "Lobster", "Shrimp"),
    ),  # fmt: skip
    OdinwSet("ThermalCheetah", "odinw/ThermalCheetah", "val", False, ("cheetah", "human")),
    OdinwSet(
        "UnoCards_raw",
        "odinw/UnoCards/raw",
        "minival",
        False,
        tuple(str(i) for i in range(15)),
    ),  # fmt: skip
    OdinwSet(
        "VehiclesOpenImages_416x416",
        "odinw/VehiclesOpenImages/416x416",
        "minival",
        True,
        ("Ambulance", "Bus", "Car", "Motorcycle", "Truck"),
    ),  # fmt: skip
    OdinwSet("WildfireSmoke", "odinw/WildfireSmoke", "val", False, ("smoke",)),
    OdinwSet(
        "boggleBoards_416x416AutoOrient_export_",
        "odinw/boggleBoards/416x416AutoOrient/export",
        "val",
        False,
        (
            "Q",
            "a",
            "an",
            "b",
            "c",
            "d",
            "e",
            "er",
            "f",
            "g",
            "h",
            "he",
            "i",
            "in",
            "j",
            "k",
            "l",
            "m",
            "n",
            "o",
            "o ",
            "p",
            "q",
            "qu",
            "r",
            "s",
            "t",
            "t\\",
            "th",
            "u",
            "v",
            "w",
            "wild",
            "x",
            "y",
            "z",
        ),
        layout="flat",
    ),  # fmt: skip
    OdinwSet(
        "brackishUnderwater_960x540",
        "odinw/brackishUnderwater/960x540",
        "minival",
        False,
        ("crab", "fish", "jellyfish", "shrimp", "small_fish", "starfish"),
    ),  # fmt: skip
    OdinwSet(
        "dice_mediumColor_export",
        "odinw/dice/mediumColor/export",
        "val",
        False,
        ("1", "2", "3", "4", "5", "6"),
        layout="flat",
    ),  # fmt: skip
    OdinwSet(
        "openPoetryVision_512x512",
        "odinw/openPoetryVision/512x512",
        "minival",
        False,
        (
            "American Typewriter",
            "Andale Mono",
            "Apple Chancery",
            "Arial",
            "Avenir",
            "Baskerville",
            "Big Caslon",
            "Bradley Hand",
            "Brush Script MT",
            "Chalkboard",
            "Comic Sans MS",
            "Copperplate",
            "Courier",
            "Didot",
            "Futura",
            "Geneva",
            "Georgia",
            "Gill Sans",
            "Helvetica",
            "Herculanum",
            "Impact",
            "Kefa",
            "Lucida Grande",
            "Luminari",
            "Marker Felt",
            "Menlo",
            "Monaco",
            "Noteworthy",
            "Optima",
            "PT Sans",
            "PT Serif",
            "Palatino",
            "Papyrus",
            "Phosphate",
            "Rockwell",
            "SF Pro",
            "SignPainter",
            "Skia",
            "Snell Roundhand",
            "Tahoma",
            "Times New Roman",
            "Trebuchet MS",
            "Verdana",
        ),
    ),  # fmt: skip
    OdinwSet(
        "pistols_export",
        "odinw/pistols/export",
        "val",
        True,
        ("pistol",),
        layout="flat",
    ),  # fmt: skip
    OdinwSet(
        "plantdoc_416x416",
        "odinw/plantdoc/416x416",
        "val",
        False,
        (
            "Apple Scab Leaf",
            "Apple leaf",
            "Apple rust leaf",
            "Bell_pepper leaf",
            "Bell_pepper leaf spot",
            "Blueberry leaf",
            "Cherry leaf",
            "Corn Gray leaf spot",
            "Corn leaf blight",
            "Corn rust leaf",
            "Peach leaf",
            "Potato leaf",
            "Potato leaf early blight",
            "Potato leaf late blight",
            "Raspberry leaf",
            "Soyabean leaf",
            "Soybean leaf",
            "Squash Powdery mildew leaf",
            "Strawberry leaf",
            "Tomato Early blight leaf",
            "Tomato Septoria leaf spot",
            "Tomato leaf",
            "Tomato leaf bacterial spot",
            "Tomato leaf late blight",
            "Tomato leaf mosaic virus",
            "Tomato leaf yellow virus",
            "Tomato mold leaf",
            "Tomato two spotted spider mites leaf",
            "grape leaf",
            "grape leaf black rot",
        ),
    ),  # fmt: skip
    OdinwSet(
        "pothole",
        "odinw/pothole",
        "val",
        True,
        ("pothole",),
        (("there are some ", "holes", " on the road"),),
    ),  # fmt: skip
    OdinwSet(
        "selfdrivingCar_fixedLarge_export_",
        "odinw/selfdrivingCar/fixedLarge/export",
        "val",
        False,
        (
            "biker",
            "car",
            "pedestrian",
            "trafficLight",
            "trafficLight-Green",
            "trafficLight-GreenLeft",
            "trafficLight-Red",
            "trafficLight-RedLeft",
            "trafficLight-Yellow",
            "trafficLight-YellowLeft",
            "truck",
        ),
        layout="flat",
    ),  # fmt: skip
    OdinwSet(
        "thermalDogsAndPeople",
        "odinw/thermalDogsAndPeople",
        "val",
        True,
        ("dog", "person"),
    ),  # fmt: skip
    OdinwSet(
        "websiteScreenshots",
        "odinw/websiteScreenshots",
        "minival",
        False,
        ("button", "field", "heading", "iframe", "image", "label", "link", "text"),
    ),
]
