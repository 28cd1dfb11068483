//! Chat conversations and their messages, kept for the web UI's sidebar.

use anyhow::Context;
use rusqlite::{OptionalExtension, params};

use super::Db;
use crate::store::records::{Conversation, ConversationWithMessages, StoredMessage};

fn conversation_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Conversation> {
    Ok(Conversation {
        id: row.get(0)?,
        title: row.get(1)?,
        model: row.get(2)?,
        created_at: row.get(3)?,
        updated_at: row.get(4)?,
    })
}

impl Db {
    pub async fn list_conversations(&self) -> anyhow::Result<Vec<Conversation>> {
        self.with_connection(|c| {
            let mut statement = c.prepare_cached(
                "SELECT id, title, model, created_at, updated_at FROM conversations
                 ORDER BY updated_at DESC, rowid DESC LIMIT 500",
            )?;
            let rows = statement.query_map([], conversation_from_row)?;
            rows.collect::<Result<Vec<_>, _>>()
                .context("listing conversations")
        })
        .await
    }

    pub async fn insert_conversation(&self, row: Conversation) -> anyhow::Result<()> {
        self.with_connection(move |c| {
            c.execute(
                "INSERT INTO conversations (id, title, model, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![row.id, row.title, row.model, row.created_at, row.updated_at],
            )
            .map(drop)
            .context("creating conversation")
        })
        .await
    }

    pub async fn conversation(
        &self,
        id: String,
    ) -> anyhow::Result<Option<ConversationWithMessages>> {
        self.with_connection(move |c| {
            let conversation = c
                .query_row(
                    "SELECT id, title, model, created_at, updated_at FROM conversations WHERE id = ?1",
                    params![id],
                    conversation_from_row,
                )
                .optional()?;
            let Some(conversation) = conversation else {
                return Ok(None);
            };
            let mut statement = c.prepare_cached(
                "SELECT role, content, created_at FROM messages WHERE conversation_id = ?1 ORDER BY id",
            )?;
            let messages = statement
                .query_map(params![id], |row| {
                    Ok(StoredMessage {
                        role: row.get(0)?,
                        content: row.get(1)?,
                        created_at: row.get(2)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Some(ConversationWithMessages {
                conversation,
                messages,
            }))
        })
        .await
    }

    /// Appends a message; `None` if the conversation does not exist.
    pub async fn add_message(
        &self,
        conversation_id: String,
        role: String,
        content: String,
        created_at: i64,
    ) -> anyhow::Result<Option<StoredMessage>> {
        self.with_connection(move |c| {
            let tx = c.transaction()?;
            let updated = tx.execute(
                "UPDATE conversations SET updated_at = ?2 WHERE id = ?1",
                params![conversation_id, created_at],
            )?;
            if updated == 0 {
                return Ok(None);
            }
            tx.execute(
                "INSERT INTO messages (conversation_id, role, content, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![conversation_id, role, content, created_at],
            )?;
            tx.commit().context("saving message")?;
            Ok(Some(StoredMessage {
                role,
                content,
                created_at,
            }))
        })
        .await
    }

    /// Deletes a conversation and its messages; false if it did not exist.
    pub async fn delete_conversation(&self, id: String) -> anyhow::Result<bool> {
        self.with_connection(move |c| {
            let deleted = c.execute("DELETE FROM conversations WHERE id = ?1", params![id])?;
            Ok(deleted > 0)
        })
        .await
    }
}
