// The visual schema of a character (SPEC section 2, the portrait-creator spec) and the API's length limits, in
// one place so every page renders the same fields with the same labels. The API stays the judge:
// it validates again and its 422 messages are shown next to the field they name.

export const NAME_MAX = 100;
export const SHORT_TEXT_MAX = 200;
export const LONG_TEXT_MAX = 4000;
export const PROMPT_MAX = 1000;

export const RACES = ['Human', 'Orc', 'Dark Elf', 'Wood Elf', 'High Elf', 'Dragonborn', 'Tiefling',
  'Rock Gnome', 'Forest Gnome', 'Halfling', 'Dwarf', 'Half-Elf', 'Half-Orc'];
export const GENDERS = ['Male', 'Female', 'Non-binary'];
export const CLASSES = ['Barbarian', 'Rogue', 'Wizard', 'Cleric', 'Monk', 'Warlock', 'Ranger',
  'Fighter', 'Bard', 'Paladin', 'Druid', 'Sorcerer', 'Artificer'];
export const AGES = ['Young', 'Adult', 'Middle-aged', 'Elderly'];
export const BUILDS = ['Slender', 'Athletic', 'Muscular', 'Stocky', 'Heavyset', 'Average'];
export const EXPRESSIONS = ['Confident', 'Serene', 'Determined', 'Friendly', 'Stern', 'Mysterious',
  'Joyful', 'Brooding', 'Wise', 'Fierce'];
export const POSES = ['Standing Confident', 'Arms Crossed', 'Weapon Ready', 'Casting Spell',
  'Seated Thoughtful', 'Looking Over Shoulder'];

/** `elf-ranger:0.8, hero` -> [{name, weight}] (weight 1 when left out, as `<lora:name>`). */
export function parseLoras(text) {
  return parseNames(text).map((item) => {
    const at = item.lastIndexOf(':');
    const weight = at > 0 ? Number(item.slice(at + 1)) : NaN;
    return Number.isFinite(weight) && item.slice(at + 1).trim() !== ''
      ? { name: item.slice(0, at).trim(), weight }
      : { name: item };
  });
}

export function formatLoras(list) {
  return (list || []).map((l) => (l.weight === 1 ? l.name : `${l.name}:${l.weight}`)).join(', ');
}

/** `bad-hands, easy-negative` -> ['bad-hands', 'easy-negative']. */
export function parseNames(text) {
  return text.split(',').map((x) => x.trim()).filter(Boolean);
}

export function formatNames(list) {
  return (list || []).join(', ');
}

const AGE_HINTS = { Young: 'Young (18-25)', Adult: 'Adult (26-40)', 'Middle-aged': 'Middle-aged (41-60)', Elderly: 'Elderly (60+)' };

/**
 * Every field of the creator, in display order. `name` is the API's field name (so a 422's
 * `field` finds its input); `blank` is what an empty select means to the server; `parse` and
 * `format` turn a list field's text into its JSON and back.
 */
export const FIELDS = [
  { name: 'name', label: 'Name', kind: 'text', max: NAME_MAX, section: 'basic', required: true, placeholder: 'Thorin Oakenshield' },
  { name: 'race', label: 'Race', kind: 'select', options: RACES, section: 'basic', blank: 'Not set' },
  { name: 'gender', label: 'Gender', kind: 'select', options: GENDERS, section: 'basic', blank: 'Default (Non-binary)' },
  { name: 'character_class', label: 'Class', kind: 'select', options: CLASSES, section: 'basic', blank: 'Not set' },
  { name: 'age_category', label: 'Age', kind: 'select', options: AGES, labels: AGE_HINTS, section: 'advanced', blank: 'Not set' },
  { name: 'build', label: 'Build', kind: 'select', options: BUILDS, section: 'advanced', blank: 'Default (Average)' },
  { name: 'height_description', label: 'Height', kind: 'text', max: SHORT_TEXT_MAX, section: 'advanced', placeholder: 'tall, average height, diminutive…' },
  { name: 'facial_expression', label: 'Facial expression', kind: 'select', options: EXPRESSIONS, section: 'advanced', blank: 'Default (Determined)' },
  { name: 'facial_features', label: 'Facial features', kind: 'text', max: SHORT_TEXT_MAX, section: 'advanced', placeholder: 'thick black beard, piercing blue eyes' },
  { name: 'attire', label: 'Attire', kind: 'text', max: SHORT_TEXT_MAX, section: 'advanced', placeholder: 'fur-lined leather armor' },
  { name: 'primary_weapon', label: 'Weapon or item', kind: 'text', max: SHORT_TEXT_MAX, section: 'advanced', placeholder: 'ornate staff with a crystal' },
  { name: 'distinguishing_feature', label: 'Distinguishing feature', kind: 'text', max: SHORT_TEXT_MAX, section: 'advanced', placeholder: 'glowing runic tattoos' },
  { name: 'background_setting', label: 'Background', kind: 'text', max: SHORT_TEXT_MAX, section: 'advanced', placeholder: 'misty forest at dawn' },
  { name: 'pose', label: 'Pose', kind: 'select', options: POSES, section: 'advanced', blank: 'Not set' },
  { name: 'loras', label: 'LoRAs', kind: 'text', max: 4000, section: 'networks', placeholder: 'elf-ranger:0.8, hero-face',
    parse: parseLoras, format: formatLoras, hint: 'Painted into every portrait of this character: name or name:weight, comma-separated.' },
  { name: 'embeddings', label: 'Embeddings', kind: 'text', max: 4000, section: 'networks', placeholder: 'bad-hands',
    parse: parseNames, format: formatNames, hint: 'Embedding files every portrait of this character needs, comma-separated.' },
  { name: 'backstory', label: 'Backstory', kind: 'textarea', max: LONG_TEXT_MAX, section: 'advanced', placeholder: 'Where they come from, what they want.' },
];

/** The fields that change the picture (everything but the backstory). */
export const VISUAL_FIELDS = FIELDS.filter((f) => f.name !== 'backstory').map((f) => f.name);

export function fieldLabel(name) {
  const f = FIELDS.find((x) => x.name === name);
  return f ? f.label : name;
}
