"""Analytics: impressions, conversions and A/B results of the stored events (SPEC §8); report and dashboard."""
