"""Variant-aware shared response cache: RFC 9111 rules, keys per variant set, memory and Redis stores."""
