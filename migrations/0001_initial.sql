-- limner schema v1: character profiles (global identity and appearance), campaigns, per-campaign
-- character state and the history of every portrait. Timestamps are RFC 3339 UTC text; JSON
-- columns hold serde_json text. Enum columns hold the canonical spelling (see src/characters/enums.rs).

CREATE TABLE characters (
    id                     TEXT PRIMARY KEY NOT NULL,
    -- Stable key of an imported character ("pregen:<id>", "legacy:<id>") so imports are idempotent.
    import_key             TEXT UNIQUE,
    name                   TEXT NOT NULL,
    character_type         TEXT NOT NULL,
    race                   TEXT,
    character_class        TEXT,
    base_level             INTEGER NOT NULL DEFAULT 1,
    voice_id               TEXT,
    voice_settings         TEXT NOT NULL DEFAULT '{}',
    voice_archetype        TEXT,
    gender                 TEXT NOT NULL,
    age_category           TEXT,
    build                  TEXT NOT NULL,
    height_description     TEXT,
    facial_expression      TEXT NOT NULL,
    facial_features        TEXT,
    attire                 TEXT,
    primary_weapon         TEXT,
    distinguishing_feature TEXT,
    background_setting     TEXT,
    pose                   TEXT,
    backstory              TEXT NOT NULL DEFAULT '',
    description            TEXT NOT NULL DEFAULT '',
    appearance             TEXT NOT NULL DEFAULT '',
    visual_description     TEXT NOT NULL DEFAULT '',
    -- Checked in code (the portrait must belong to this character); no FK to avoid a cycle.
    current_portrait_id    TEXT,
    owner_id               TEXT,
    total_interactions     INTEGER NOT NULL DEFAULT 0,
    created_at             TEXT NOT NULL,
    updated_at             TEXT NOT NULL
);
CREATE INDEX characters_owner ON characters(owner_id);
CREATE INDEX characters_name ON characters(name COLLATE NOCASE);

CREATE TABLE campaigns (
    id          TEXT PRIMARY KEY NOT NULL,
    import_key  TEXT UNIQUE,
    name        TEXT NOT NULL,
    dm_id       TEXT,
    description TEXT NOT NULL DEFAULT '',
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);
CREATE INDEX campaigns_dm ON campaigns(dm_id);

-- CharacterInfo: campaign state only, never identity or appearance.
CREATE TABLE campaign_characters (
    campaign_id        TEXT NOT NULL REFERENCES campaigns(id) ON DELETE CASCADE,
    character_id       TEXT NOT NULL REFERENCES characters(id) ON DELETE CASCADE,
    level              INTEGER,
    hit_points_current INTEGER NOT NULL DEFAULT 10,
    hit_points_max     INTEGER NOT NULL DEFAULT 10,
    armor_class        INTEGER NOT NULL DEFAULT 10,
    status             TEXT NOT NULL DEFAULT 'healthy',
    inventory          TEXT NOT NULL DEFAULT '{}',
    location           TEXT,
    quests             TEXT NOT NULL DEFAULT '[]',
    extra              TEXT NOT NULL DEFAULT '{}',
    joined_at          TEXT NOT NULL,
    updated_at         TEXT NOT NULL,
    PRIMARY KEY (campaign_id, character_id)
);
CREATE INDEX campaign_characters_character ON campaign_characters(character_id);

CREATE TABLE portraits (
    id                 TEXT PRIMARY KEY NOT NULL,
    character_id       TEXT NOT NULL REFERENCES characters(id) ON DELETE CASCADE,
    file_path          TEXT NOT NULL,
    thumbnail_path     TEXT,
    prompt             TEXT NOT NULL DEFAULT '',
    negative_prompt    TEXT NOT NULL DEFAULT '',
    parameters         TEXT NOT NULL DEFAULT '{}',
    -- u64 seeds are stored bit-for-bit as i64.
    seed               INTEGER,
    model              TEXT,
    art_style          TEXT,
    parent_portrait_id TEXT REFERENCES portraits(id) ON DELETE SET NULL,
    created_at         TEXT NOT NULL
);
CREATE INDEX portraits_character ON portraits(character_id, created_at);
