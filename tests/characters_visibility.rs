//! Visibility and pagination decided by the store, checked against a model of the rules on 3000
//! characters: every viewer's pages (by cursor and by offset, under each filter) cover exactly
//! the rows the rules allow, once each, in (name, id) order; single reads agree.

use std::collections::{BTreeSet, HashMap};

use limner::characters::{
    CampaignFilter, CharacterFilter, CharacterPatch, CharacterStore, NewCampaign, NewCharacter,
    PageKey, Store, Viewer,
};

const CHARACTERS: usize = 3000;
const PLAYERS: usize = 40;
const CAMPAIGNS: usize = 25;

/// What was written, so visibility can be recomputed from the rules alone.
struct World {
    store: Store,
    /// id -> (name, owner)
    characters: HashMap<String, (String, Option<String>)>,
    /// campaign id -> (name, dm, member ids)
    campaigns: HashMap<String, (String, String, BTreeSet<String>)>,
}

fn player(i: usize) -> String {
    format!("p{i}")
}

fn world() -> World {
    let store = Store::open_in_memory().unwrap();
    let mut characters = HashMap::new();
    let mut campaigns = HashMap::new();
    for k in 0..CAMPAIGNS {
        // A few DMs run several campaigns; "dm-only" runs one and plays in none.
        let dm = if k == 0 {
            "dm-only".to_string()
        } else {
            player(PLAYERS + k % 4)
        };
        let name = format!("{} campaign", if k % 2 == 0 { "Tomb" } else { "tomb" });
        let c = store
            .create_campaign(&NewCampaign {
                name: name.clone(),
                dm_id: Some(dm.clone()),
                description: None,
            })
            .unwrap();
        campaigns.insert(c.id, (name, dm, BTreeSet::new()));
    }
    let campaign_ids: Vec<String> = {
        let mut v: Vec<_> = campaigns.keys().cloned().collect();
        v.sort();
        v
    };
    for i in 0..CHARACTERS {
        // Uneven owners, some characters without one, names that tie case-insensitively.
        let owner = (i % 13 != 0).then(|| player((i * 7 + i / 100) % PLAYERS));
        let name = format!("{}ero {}", if i % 3 == 0 { "H" } else { "h" }, i % 40);
        let c = store
            .create_character(&NewCharacter {
                name: name.clone(),
                owner_id: owner.clone(),
                ..Default::default()
            })
            .unwrap();
        if i % 5 < 2 {
            let k = &campaign_ids[(i / 5) % CAMPAIGNS];
            store.join_campaign(k, &c.id, &Default::default()).unwrap();
            campaigns.get_mut(k).unwrap().2.insert(c.id.clone());
        }
        characters.insert(c.id, (name, owner));
    }
    // "solo" owns three characters that sort after everything, and plays in no campaign.
    for n in ["Zed", "zed", "Zz last"] {
        let c = store
            .create_character(&NewCharacter {
                name: n.into(),
                owner_id: Some("solo".into()),
                ..Default::default()
            })
            .unwrap();
        characters.insert(c.id, (n.into(), Some("solo".into())));
    }
    World {
        store,
        characters,
        campaigns,
    }
}

impl World {
    fn campaign_visible(&self, viewer: &Viewer, id: &str) -> bool {
        let Some(u) = viewer.user() else { return true };
        let (_, dm, members) = &self.campaigns[id];
        dm == u
            || members
                .iter()
                .any(|m| self.characters[m].1.as_deref() == Some(u))
    }

    fn character_visible(&self, viewer: &Viewer, id: &str) -> bool {
        let Some(u) = viewer.user() else { return true };
        self.characters[id].1.as_deref() == Some(u)
            || self
                .campaigns
                .iter()
                .any(|(k, (_, _, m))| m.contains(id) && self.campaign_visible(viewer, k))
    }

    /// The ids `viewer` should get for `f`, in list order.
    fn expected(&self, viewer: &Viewer, f: &CharacterFilter) -> Vec<String> {
        let mut ids: Vec<&String> = self
            .characters
            .iter()
            .filter(|(id, (name, owner))| {
                self.character_visible(viewer, id)
                    && f.owner_id
                        .as_ref()
                        .is_none_or(|o| owner.as_ref() == Some(o))
                    && f.name
                        .as_ref()
                        .is_none_or(|n| name.to_lowercase().contains(&n.to_lowercase()))
                    && f.campaign_id
                        .as_ref()
                        .is_none_or(|k| self.campaigns[k].2.contains(*id))
            })
            .map(|(id, _)| id)
            .collect();
        ids.sort_by_key(|id| (self.characters[*id].0.to_lowercase(), (*id).clone()));
        ids.into_iter().cloned().collect()
    }

    /// Every page by cursor, checking each page's size and the next key.
    fn by_cursor(&self, f: &CharacterFilter, limit: u32) -> Vec<String> {
        let mut out = Vec::new();
        let mut after: Option<PageKey> = None;
        loop {
            let page = self
                .store
                .character_page(&CharacterFilter {
                    limit: Some(limit),
                    after: after.clone(),
                    ..f.clone()
                })
                .unwrap();
            assert!(page.items.len() <= limit as usize);
            out.extend(page.items.iter().map(|e| e.profile.id.clone()));
            match page.next {
                Some(next) => {
                    assert_eq!(page.items.len(), limit as usize, "only full pages go on");
                    assert_eq!(next.id, *out.last().unwrap());
                    after = Some(next);
                }
                None => return out,
            }
        }
    }

    fn by_offset(&self, f: &CharacterFilter, limit: u32) -> Vec<String> {
        let mut out = Vec::new();
        loop {
            let items = self
                .store
                .list_characters(&CharacterFilter {
                    limit: Some(limit),
                    offset: Some(out.len() as u32),
                    ..f.clone()
                })
                .unwrap();
            let n = items.len();
            out.extend(items.into_iter().map(|p| p.id));
            if n < limit as usize {
                return out;
            }
        }
    }
}

fn viewers() -> Vec<Viewer> {
    let mut v = vec![
        Viewer::Admin,
        Viewer::User("dm-only".into()),
        Viewer::User("solo".into()),
        Viewer::User("outsider".into()),
    ];
    // Players, DMs who also play, and DMs who only run campaigns.
    for i in [0, 1, 7, 19, PLAYERS, PLAYERS + 1, PLAYERS + 3] {
        v.push(Viewer::User(player(i)));
    }
    v
}

#[test]
fn pages_cover_exactly_the_visible_rows_under_every_filter() {
    let w = world();
    let some_campaign = w.campaigns.keys().min().unwrap().clone();
    for viewer in viewers() {
        let base = CharacterFilter {
            visible_to: viewer.clone(),
            ..Default::default()
        };
        let filters = [
            base.clone(),
            CharacterFilter {
                owner_id: Some(player(7)),
                ..base.clone()
            },
            CharacterFilter {
                owner_id: viewer.user().map(str::to_string),
                ..base.clone()
            },
            CharacterFilter {
                name: Some("ERO 1".into()),
                ..base.clone()
            },
            CharacterFilter {
                campaign_id: Some(some_campaign.clone()),
                name: Some("3".into()),
                ..base.clone()
            },
        ];
        for f in &filters {
            let want = w.expected(&viewer, f);
            let got = w.by_cursor(f, 97);
            assert_eq!(got.len(), want.len(), "{viewer:?} {f:?}");
            assert_eq!(got, want, "{viewer:?} {f:?}: cursor pages");
            assert_eq!(w.by_offset(f, 250), want, "{viewer:?} {f:?}: offset pages");
        }
    }
}

#[test]
fn own_characters_are_on_the_first_page_and_outsiders_see_nothing() {
    let w = world();
    let first = |u: &str| {
        w.store
            .character_page(&CharacterFilter {
                visible_to: Viewer::User(u.into()),
                ..Default::default()
            })
            .unwrap()
    };
    // Three thousand characters sort before solo's, and none of them is solo's to see.
    let solo = first("solo");
    let names: Vec<&str> = solo.items.iter().map(|e| e.profile.name.as_str()).collect();
    assert_eq!(names.len(), 3, "{names:?}");
    let mut lower: Vec<String> = names.iter().map(|n| n.to_lowercase()).collect();
    lower.dedup();
    assert_eq!(lower, ["zed", "zz last"], "{names:?}");
    assert!(solo.next.is_none());
    let outsider = first("outsider");
    assert!(outsider.items.is_empty() && outsider.next.is_none());
    // A player's own characters: all of them, in one page, with the owner filter.
    for i in [0, 7, 19] {
        let mine = w
            .store
            .list_characters(&CharacterFilter {
                owner_id: Some(player(i)),
                limit: Some(1000),
                visible_to: Viewer::User(player(i)),
                ..Default::default()
            })
            .unwrap();
        let owned = w
            .characters
            .values()
            .filter(|(_, o)| o.as_deref() == Some(player(i).as_str()))
            .count();
        assert!(owned > 50, "the model gives p{i} many characters");
        assert_eq!(mine.len(), owned);
    }
}

#[test]
fn single_reads_and_campaign_lists_follow_the_same_rules() {
    let w = world();
    let mut ids: Vec<&String> = w.characters.keys().collect();
    ids.sort();
    for viewer in viewers() {
        for id in ids.iter().step_by(17) {
            let got = w.store.visible_character(&viewer, id);
            assert_eq!(
                got.is_ok(),
                w.character_visible(&viewer, id),
                "{viewer:?} {id}"
            );
        }
        let mut want: Vec<&String> = w
            .campaigns
            .keys()
            .filter(|k| w.campaign_visible(&viewer, k))
            .collect();
        want.sort_by_key(|k| (w.campaigns[*k].0.to_lowercase(), (*k).clone()));
        let mut got = Vec::new();
        let mut after = None;
        loop {
            let page = w
                .store
                .campaign_page(&CampaignFilter {
                    limit: Some(4),
                    after,
                    visible_to: viewer.clone(),
                    ..Default::default()
                })
                .unwrap();
            for c in &page.items {
                assert_eq!(
                    c.character_ids.iter().collect::<BTreeSet<_>>(),
                    w.campaigns[&c.id].2.iter().collect::<BTreeSet<_>>()
                );
                assert!(w.store.visible_campaign(&viewer, &c.id).is_ok());
            }
            got.extend(page.items.into_iter().map(|c| c.id));
            match page.next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        assert_eq!(got.iter().collect::<Vec<_>>(), want, "{viewer:?}");
        for k in w.campaigns.keys() {
            assert_eq!(
                w.store.visible_campaign(&viewer, k).is_ok(),
                w.campaign_visible(&viewer, k),
                "{viewer:?} {k}"
            );
        }
    }
}

#[test]
fn visibility_follows_owner_changes_leaving_and_deletes() {
    let mut w = world();
    let mut ids: Vec<String> = w.characters.keys().cloned().collect();
    ids.sort();
    let mut campaign_ids: Vec<String> = w.campaigns.keys().cloned().collect();
    campaign_ids.sort();
    // Give some characters to another player, take the owner off others.
    for (n, id) in ids.iter().step_by(41).enumerate() {
        let owner = (n % 3 != 0).then(|| player(n % 5));
        w.store
            .update_character(
                id,
                &CharacterPatch {
                    owner_id: Some(owner.clone()),
                    ..Default::default()
                },
            )
            .unwrap();
        w.characters.get_mut(id).unwrap().1 = owner;
    }
    // Some members leave, some characters and one campaign are deleted.
    for k in campaign_ids.iter().take(6) {
        let first = w.campaigns[k].2.iter().next().cloned();
        if let Some(c) = first {
            w.store.leave_campaign(k, &c).unwrap();
            w.campaigns.get_mut(k).unwrap().2.remove(&c);
        }
    }
    for id in ids.iter().skip(3).step_by(97) {
        w.store.delete_character(id).unwrap();
        w.characters.remove(id);
        for (_, _, m) in w.campaigns.values_mut() {
            m.remove(id);
        }
    }
    let gone = campaign_ids[1].clone();
    w.store.delete_campaign(&gone).unwrap();
    w.campaigns.remove(&gone);
    for viewer in viewers() {
        let f = CharacterFilter {
            visible_to: viewer.clone(),
            ..Default::default()
        };
        assert_eq!(w.by_cursor(&f, 211), w.expected(&viewer, &f), "{viewer:?}");
        for k in w.campaigns.keys() {
            assert_eq!(
                w.store.visible_campaign(&viewer, k).is_ok(),
                w.campaign_visible(&viewer, k),
                "{viewer:?} {k}"
            );
        }
    }
}
