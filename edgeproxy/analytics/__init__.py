"""Analytics: impressions, conversions and A/B results of the stored events (docs/contract.md §8); report and
dashboard."""
