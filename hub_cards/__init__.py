"""Model cards for chexlab models: a Jinja template rendered from a run folder."""

from hub_cards.render import CardError, CardInfo, render_card, write_card

__all__ = ["CardError", "CardInfo", "render_card", "write_card"]
