"""Two generators side by side (e.g. dense and pyramid) on the same held-out events, for the evaluation report.

:func:`~graphsr.eval.evaluate.evaluate_other` runs a second checkpoint exactly as
:func:`~graphsr.eval.evaluate.generate` ran the first; :func:`side_by_side` keeps the figures that tell the generators apart from each one's
:func:`~graphsr.eval.evaluate.compute_metrics`; :func:`comparison_markdown` writes them as a report section.
"""

from __future__ import annotations


def _value(pair) -> float | None:
    return None if pair is None else pair["value"]


def side_by_side(results: dict[str, dict]) -> dict:
    """``{figure: {name: value}}`` of each named result of :func:`~graphsr.eval.evaluate.compute_metrics`.

    Event level: spread ratio against the coarse cells, bias, coverage of the 68% interval; per layer: the written
    estimate's cell RMSE and hallucinated energy, one sample's hits per event (against the truth's) and hit
    precision / recall; one sample's classifier AUC against the truth; the time per event."""
    table: dict[str, dict[str, float | None]] = {}

    def put(figure, name, value):
        table.setdefault(figure, {})[name] = value

    for name, r in results.items():
        ev = r["event"]
        put("event energy: spread ratio SR / coarse", name, ev["ratio"])
        put("event energy: bias", name, _value(ev["super_resolved"]["bias"]))
        coverage = r.get("coverage", {})
        put("68% coverage: event energy", name, _value(coverage.get("event_energy", {}).get("0.68")))
        put("68% coverage: hit fine cells", name, _value(coverage.get("hit_cells", {}).get("0.68")))
        for layer, cell in r["cell"].items():
            sample, estimate = cell["super_resolved_sample"], cell["super_resolved_estimate"]
            put(f"{layer}: cell RMSE / GeV (estimate)", name, _value(estimate["rmse"]))
            put(f"{layer}: hits / event (one sample; truth {cell['truth']['hits_per_event']:.1f})", name,
                sample["hits_per_event"])
            put(f"{layer}: hit precision (one sample)", name, sample["occupancy"]["precision"])
            put(f"{layer}: hit recall (one sample)", name, sample["occupancy"]["recall"])
            put(f"{layer}: hallucinated GeV / event (estimate)", name, estimate["hallucinated_gev_per_event"])
        put("classifier AUC, one sample vs truth", name,
            _value(r["physics_distances"]["super_resolved_sample"]["classifier_auc"]))
        put("ms per event (whole ensemble)", name, r["ms_per_event"])
    return table


def comparison_markdown(table: dict) -> list[str]:
    """The report section of :func:`side_by_side`'s table."""
    names = list(next(iter(table.values())))
    lines = ["## Generators side by side", "",
             "The same held-out events, ensemble and sampler for each checkpoint (`graphsr evaluate --compare`). "
             "Hits: cells above 1 MeV; one sample: the generator's own output, before any ensemble averaging.", "",
             "| figure | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for figure, values in table.items():
        cells = ["n/a" if values.get(n) is None else f"{values[n]:.4g}" for n in names]
        lines.append(f"| {figure} | " + " | ".join(cells) + " |")
    return lines + [""]
