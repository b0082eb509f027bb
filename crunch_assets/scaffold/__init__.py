"""Scaffolding: `crunch-dagster init` renders a new competition (private competition module, public
challenge package, tests, SKILL.md files, workspace entry) from a pack and an optional spec file;
`crunch-dagster doctor` checks one without starting anything. See docs/scaffolding.md."""
