"""Faust topic objects for the contract's topics; values stay raw bytes."""

from __future__ import annotations

from streams import names
from streams.pipeline.app import app

clicks_topic = app.topic(names.CLICKS, key_type=bytes, value_type=bytes, value_serializer="raw", key_serializer="raw")
signups_topic = app.topic(names.SIGNUPS, key_type=bytes, value_type=bytes, value_serializer="raw", key_serializer="raw")
orders_topic = app.topic(names.ORDERS, key_type=bytes, value_type=bytes, value_serializer="raw", key_serializer="raw")
tiers_topic = app.topic(names.TIERS, key_type=bytes, value_type=bytes, value_serializer="raw", key_serializer="raw")
commissions_topic = app.topic(
    names.COMMISSIONS, key_type=bytes, value_type=bytes, value_serializer="raw", key_serializer="raw"
)
bindings_topic = app.topic(
    names.BINDINGS, key_type=bytes, value_type=bytes, value_serializer="raw", key_serializer="raw"
)
dead_letters_topic = app.topic(
    names.DEAD_LETTERS, key_type=bytes, value_type=bytes, value_serializer="raw", key_serializer="raw"
)
clicks_limited_topic = app.topic(
    names.CLICKS_LIMITED, key_type=bytes, value_type=bytes, value_serializer="raw", key_serializer="raw"
)
