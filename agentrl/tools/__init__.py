"""Tools: typed functions with JSON schemas, tool-call parsers, prompt rendering and sandboxes."""

from agentrl.tools.parsers import HermesParser, ParseError, ParseResult, TagParser, ToolCall
from agentrl.tools.schema import Tool, tool

__all__ = ["HermesParser", "ParseError", "ParseResult", "TagParser", "Tool", "ToolCall", "tool"]
