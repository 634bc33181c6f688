"""The twin's REST slice: what-if scenarios, model list, stored forecasts."""
