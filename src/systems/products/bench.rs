//! `livros bench --system products`.
