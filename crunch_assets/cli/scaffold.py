"""`crunch-dagster init` and `crunch-dagster doctor`: generate a competition, and check one."""

from __future__ import annotations

from pathlib import Path

import click

from crunch_assets.scaffold.config import PACKS


@click.command()
@click.argument("slug", required=False)
@click.option("--pack", type=click.Choice(PACKS), help="The pack to start from (default: the spec's \"pack\", else baseline).")
@click.option("--spec", "spec_path", type=click.Path(dir_okay=False, path_type=Path), help="A spec file (JSON, \"spec_version\": \"1\") merged over the pack.")
@click.option("--output", "output", type=click.Path(file_okay=False, path_type=Path),
              default=Path("."), show_default=True, help="The checkout to generate into (it holds workspace.yaml).")
def init(slug: str | None, pack: str | None, spec_path: Path | None, output: Path) -> None:
    """Generate the competition SLUG: competitions/SLUG/ (spec, callables, model base, public
    schemas and scoring, models, SKILL.md), challenges/SLUG/ (the participants' distribution of
    those public modules), tests/competitions/test_SLUG.py and its code
    location in workspace.yaml. Refuses a taken or malformed slug and a spec with any unknown key
    or bad value (exit 1), writing nothing."""
    from crunch_assets.scaffold.config import ScaffoldError, resolve
    from crunch_assets.scaffold.generate import existing_problems, render, write

    try:
        resolved = resolve(slug, pack, spec_path)
        taken = existing_problems(output.resolve(), resolved.slug)
        if taken:
            raise ScaffoldError(taken)
        files = render(resolved)
        write(output, files, resolved.slug)
    except ScaffoldError as error:
        for problem in error.problems:
            click.echo(f"error: {problem}", err=True)
        click.echo("nothing was written", err=True)
        raise SystemExit(1) from None
    slug = resolved.slug
    click.echo(f"generated {slug} (pack {resolved.pack}) in {output.resolve()}:")
    for generated in files:
        click.echo(f"  {generated.path}")
    click.echo(f"  workspace.yaml: + code location {slug}")
    click.echo("next:")
    click.echo(f"  .venv/bin/crunch-dagster doctor {slug}")
    click.echo(f"  .venv/bin/python -m pytest tests/competitions/test_{slug}.py -q")
    click.echo(f"  ./scripts/demo    # the Dagster UI lists the {slug} code location")
    click.echo(f"  competitions/{slug}/SKILL.md and challenges/{slug}/SKILL.md say where the logic goes")


@click.command()
@click.argument("slug", required=False)
@click.option("--spec", "spec_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Check a spec file instead of a generated competition.")
@click.option("--pack", type=click.Choice(PACKS), help="With --spec: the pack it merges over.")
def doctor(slug: str | None, spec_path: Path | None, pack: str | None) -> None:
    """Check the competition SLUG (or a spec file) without starting anything: the spec, the
    callable wiring, the models directory and the feed the environment selects. Prints every
    problem with its fix; exit 1 if there is any."""
    from crunch_assets.scaffold.doctor import doctor_competition, doctor_spec

    if (slug is None) == (spec_path is None):
        raise click.UsageError("give a SLUG or --spec FILE (one of them)")
    if pack and spec_path is None:
        raise click.UsageError("--pack goes with --spec")
    report = doctor_spec(spec_path, pack) if spec_path is not None else doctor_competition(slug)
    if report.ok:
        click.echo(f"doctor {report.subject}: no problem ({', '.join(report.checked)} checked)")
        return
    click.echo(f"doctor {report.subject}: {len(report.problems)} problem(s)")
    for number, problem in enumerate(report.problems, 1):
        click.echo(f"{number}. {problem.what}")
        click.echo("   fix: " + problem.fix.replace("\n", "\n        "))
    raise SystemExit(1)
