"""The KPI REST slice: KeyPerformanceIndicator entities read from the broker."""
