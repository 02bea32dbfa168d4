"""Chatbot management platform."""
