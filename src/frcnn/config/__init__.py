"""The composed config's start-up checks: rule types, the schema, rules between keys."""
