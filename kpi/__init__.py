"""The KPI engine: definitions (`kpi.definitions`), calculators (`kpi.calculators`, `kpi.catalogue`), the engine
(`kpi.engine`), backfill (`kpi.backfill`) and the `climaborough kpi` commands (`kpi.commands`).

Nothing is imported here, so that `climaborough --help` stays fast.
"""
