from .official import DROPPED_OFFICIAL_KEYS, convert_official_state_dict, official_to_glip_d2_key

__all__ = ["DROPPED_OFFICIAL_KEYS", "convert_official_state_dict", "official_to_glip_d2_key"]
