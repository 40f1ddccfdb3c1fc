"""Versioned ClickHouse migrations (NNN_name.sql), a package so they ship as package data."""
